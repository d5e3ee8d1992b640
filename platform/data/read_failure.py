"""A damaged store found in a run: recorded once, never retried, said in one line.

A read that fails on a damaged shard (store.ShardDamaged: a torn upload, a truncated file)
fails the same way after every restart, since the restart reads the same bytes. So the
worker that meets it records the error in the run folder before failing; the restarted
workers of the same launch find the record and finish at once instead of training (no
second failure), and `palm run` prints the line and exits 2 with the fix:

    worker: read fails -> record(run_dir, launched_at, error) -> raise (Ray Train restarts)
    restarted workers: recorded(run_dir, launched_at) -> return without training
    `palm run`: recorded(...) -> one line, exit 2
"""

from __future__ import annotations

import json
from pathlib import Path

from palm_platform.atomic_write import write_atomic
from palm_platform.data.store import StoreError
from palm_platform.run_dir import RunDir


def store_error_in(error: BaseException) -> StoreError | None:
    """The StoreError that caused `error` (the prefetch thread wraps it), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StoreError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def record(run_dir: Path, launched_at: float | None, error: BaseException) -> bool:
    """Record a store error behind `error` for this launch; False when there is none."""
    found = store_error_in(error)
    if found is None:
        return False
    line = str(found).splitlines()[0] if str(found) else repr(found)
    write_atomic(RunDir(Path(run_dir)).data_error,
                 json.dumps({"launched_at": launched_at, "error": line}))
    return True


def recorded(run_dir: Path, launched_at: float | None) -> str | None:
    """The line recorded for this launch (None: none, or one of an earlier launch)."""
    try:
        data = json.loads(RunDir(Path(run_dir)).data_error.read_text())
    except (OSError, ValueError):
        return None
    return data.get("error") if data.get("launched_at") == launched_at else None
