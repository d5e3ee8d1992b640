"""A per-checkpoint manifest of file sizes and CRC32s, and the check against it.

Why: Orbax marks a checkpoint complete (atomic rename locally, `commit_success.txt` on GCS)
but never re-reads it, and OCDBT only notices a truncated or deleted data file when that
very chunk is read. After a save finalises, process 0 lists every file of the step
directory (all processes' OCDBT files, the JSON items and Orbax's metadata) and writes
`palm_manifest.json` next to them; a size check is a handful of `stat` calls, a checksum
check reads the checkpoint once. A checkpoint without a manifest (the writer died between
Orbax's commit and the manifest) is still complete; it is verified by reading it back.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib

from etils import epath

from palm_platform.atomic_write import write_atomic

MANIFEST_NAME = "palm_manifest.json"
_BLOCK_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damaged part of a checkpoint: the file and what is wrong with it."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def describe_error(error: BaseException) -> str:
    """First line of an error, short: TensorStore errors embed a whole JSON spec."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def crc32_of(path: epath.Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(_BLOCK_BYTES):
            crc = zlib.crc32(block, crc)  # zlib releases the GIL on large blocks
    return crc


def walk_files(directory: epath.Path) -> list[epath.Path]:
    """Every file below `directory` (epath refuses recursive globs, for GCS's sake)."""
    files = []
    for child in directory.iterdir():
        files.extend(walk_files(child) if child.is_dir() else [child])
    return files


def checkpoint_files(step_dir: epath.Path) -> list[epath.Path]:
    return sorted(p for p in walk_files(step_dir) if not p.name.startswith(MANIFEST_NAME))


def write_manifest(step_dir: epath.Path, *, checksums: bool) -> dict:
    """Record every file of a finalised checkpoint, atomically.

    On a file system: written under a temporary name and renamed. On GCS a rename is a copy
    and a delete (gcsfs first tries the `moveTo` call, which buckets without a hierarchical
    namespace, and the emulator, refuse only after ~30 s of retries), but one object upload
    is already atomic: the object appears whole or not at all, so it is written in place.
    """
    files = {}
    for path in checkpoint_files(step_dir):
        entry = {"size": path.stat().length}
        if checksums:
            entry["crc32"] = crc32_of(path)
        files[str(path.relative_to(step_dir))] = entry
    manifest = {"format": 1, "written_at": time.time(), "files": files}
    text = json.dumps(manifest, indent=0, sort_keys=True)
    if str(step_dir).startswith("gs://"):
        (step_dir / MANIFEST_NAME).write_text(text)
        return manifest
    write_atomic(step_dir / MANIFEST_NAME, text)
    return manifest


def read_manifest(step_dir: epath.Path) -> dict | None:
    path = step_dir / MANIFEST_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


def check_against_manifest(
    step_dir: epath.Path, manifest: dict, *, checksums: bool
) -> list[Damage]:
    """Files that are missing, of the wrong size, or (with `checksums`) of the wrong CRC32."""
    damage = []
    for relative, expected in sorted(manifest["files"].items()):
        path = step_dir / relative
        if not path.exists():
            damage.append(Damage(str(path), "missing"))
            continue
        size = path.stat().length
        if size != expected["size"]:
            damage.append(Damage(str(path), f"size {size} bytes, manifest says {expected['size']}"))
        elif checksums and "crc32" in expected and crc32_of(path) != expected["crc32"]:
            damage.append(Damage(str(path), "CRC32 differs from the manifest"))
    return damage
