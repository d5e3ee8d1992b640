"""What a checkpoint directory holds: steps, time, size, complete or not. No JAX needed.

Orbax writes step N into `N.orbax-checkpoint-tmp-<time>` and renames it to `N` once every
process has finished (local and most POSIX file systems), or writes into `N` and adds
`commit_success.txt` last (GCS, where rename is not atomic). Either way a step directory is
complete exactly when its name is the bare step number and `commit_success.txt` is in it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re

from etils import epath

from palm_platform.checkpoint.errors import CheckpointNotFound
from palm_platform.checkpoint.manifest import MANIFEST_NAME, walk_files

COMMIT_MARKER = "commit_success.txt"
_STEP_DIR = re.compile(r"^(\d+)(\.orbax-checkpoint-tmp.*)?$")


def checkpoint_path(directory: str | epath.PathLike) -> epath.Path:
    """The directory as a path object; `gs://bucket/x` stays `gs://bucket/x`.

    `pathlib.Path("gs://b/x")` collapses the double slash into `gs:/b/x`, a local path;
    `epath.Path` keeps the scheme, and Orbax hands the string unchanged to TensorStore's
    `gcs` kvstore. Relative local paths are the caller's to resolve.
    """
    return epath.Path(str(directory) if not isinstance(directory, epath.Path) else directory)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: epath.Path
    complete: bool
    has_manifest: bool
    size_bytes: int
    time: datetime.datetime | None


def _commit_time(step_dir: epath.Path) -> datetime.datetime | None:
    metadata = step_dir / "_CHECKPOINT_METADATA"
    try:
        fields = json.loads(metadata.read_text())
        nanoseconds = fields.get("commit_timestamp_nsecs") or fields["init_timestamp_nsecs"]
        return datetime.datetime.fromtimestamp(nanoseconds / 1e9, tz=datetime.UTC)
    except (OSError, KeyError, ValueError):
        return None


def _size(step_dir: epath.Path) -> int:
    """Bytes under `step_dir`. A save in flight changes the tree while it is listed (Orbax
    deletes its lock files and renames the temporary folder on commit): a file or folder
    that vanishes between listing and `stat` counts as nothing, instead of failing the list."""
    try:
        files = walk_files(step_dir)
    except FileNotFoundError:
        return 0
    total = 0
    for path in files:
        try:
            total += path.stat().length
        except FileNotFoundError:
            pass
    return total


def list_checkpoints(directory: str | epath.PathLike) -> list[CheckpointInfo]:
    """Every step directory under `directory`, oldest first, complete or not."""
    root = checkpoint_path(directory)
    if not root.is_dir():
        raise CheckpointNotFound(
            f"{root}: no such checkpoint directory. Fix: pass the `checkpoint.directory` "
            "of the job (a folder with numbered step folders in it)"
        )
    infos = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if not match or not child.is_dir():
            continue
        complete = match.group(2) is None and (child / COMMIT_MARKER).exists()
        infos.append(
            CheckpointInfo(
                step=int(match.group(1)),
                path=child,
                complete=complete,
                has_manifest=(child / MANIFEST_NAME).exists(),
                size_bytes=_size(child),
                time=_commit_time(child),
            )
        )
    return sorted(infos, key=lambda i: (i.step, i.complete))
