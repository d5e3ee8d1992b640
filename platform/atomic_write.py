"""Write a file so that a reader sees the old contents or the new, never half of them.

Run folders, state files and caches are read by other processes while they are written
(`palm status` during a run, a restarted worker after a kill, `palm run` finding a
cluster). Writing to a temporary file in the same folder and renaming it over the target is
atomic on POSIX file systems; `durable=True` also fsyncs the file and its folder, for the
records that must survive the machine going down, not just the process. Only the standard
library is imported here, so any module may use it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _temp_path(path: Path) -> Path:
    # Unique per host, process and thread: several hosts may write into one shared folder.
    # It starts with the target's name, so a leftover of a crash is recognisably the
    # target's (checkpoint/manifest.py skips every `palm_manifest.json*` when listing files).
    owner = f"{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}"
    return path.with_name(f"{path.name}.{owner}.tmp")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, durable: bool = False
                ) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path` in one step.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(os.fspath(path))
    tmp = _temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes, *, durable: bool = False) -> None:
    """Replace `path` with `data` atomically (text or bytes); see `atomic_open`."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", durable=durable) as f:
        f.write(data)
