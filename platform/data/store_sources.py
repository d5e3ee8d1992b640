"""The training read path's side of the token store: a job's sources, opened in place.

    open_sources(data_config, base_dir, tokenizer, resolved)
        store_status(...) current?  no -> prepare_store(in_process=True) (library callers)
        TokenStore.open(root): complete, the job's tokenizer, every source present
        -> [Source(name, tokens=SourceTokens view over the shards, stats from the manifest)]
    read_windows([(tokens, start, stop), ...]) -> int32 [rows, stop - start]

Nothing here copies a source: `tokens` is a view that reads the windows a process asks for
(store.SourceTokens), so start-up and host memory do not grow with the corpus. `palm run`
prepares the store on the cluster before any worker starts (ray/run.py); preparing here, in
the calling process, is for library callers and one-host runs (tests, `palm run --direct`,
the eval commands) on small corpora.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from palm_platform.data.config import DataConfig, SourceConfig
from palm_platform.data.store import StoreError, TokenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One source as the pipeline reads it: its tokens and what reading its input found."""

    name: str
    tokens: Any  # store.SourceTokens, or a view of one (data/heldout_split.py's SpanTokens)
    stats: dict  # merged read stats from the manifest: documents, bad, first_bad


@contextlib.contextmanager
def _prepare_lock(root: str):
    """One preparer per local store among the processes of a machine (the others wait and
    then find it current); flock is the standard library's lock and works on local disk.
    A gs:// store is prepared by `palm run` or `palm data prepare`, not by training hosts."""
    lock_path = Path(root).parent / f".{Path(root).name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def still_being_prepared(root: str, job_file: str = "JOB.yaml") -> StoreError:
    """The error for a store whose prepare job has not finished (running, or stopped)."""
    return StoreError(f"{root}: the token store is still being prepared (its manifest is not "
                      "complete); training reads only a complete store. Fix: let `palm data "
                      f"prepare` finish, or run `palm data prepare {job_file}` to resume it")


def _prepare_here(data_config: DataConfig, base_dir: Path, reason: str) -> None:
    from palm_platform.data.prepare import prepare_store

    result = prepare_store(data_config, base_dir, in_process=True, progress=False)
    log.info("prepared token store %s in this process (%s): %d shards (%d written), %d "
             "documents, %d tokens", result.root, reason, result.shards, result.written,
             result.documents, result.tokens)


def ensure_current(data_config: DataConfig, base_dir: Path, *, process_count: int = 1) -> str:
    """The job's store root, prepared in this process first when it is missing or stale.

    A store still being prepared (its manifest not complete) is an error, never a second
    writer: nothing here can tell a running prepare job from a stopped one. Hosts of a
    multi-host job never prepare a gs:// store themselves (each would tokenise the whole
    corpus): `palm run` has prepared it on the cluster before they start.
    """
    from palm_platform.data.prepare import store_root, store_status

    root = store_root(data_config, base_dir)
    status = store_status(data_config, base_dir)
    if status.state == "current":
        return root
    if root.startswith("gs://"):
        if status.state == "incomplete":
            raise still_being_prepared(root)
        if process_count == 1:  # one process: no other preparer to race with
            _prepare_here(data_config, base_dir, status.reason)
            return root
        raise StoreError(f"{root}: the job's token store is {status.state} ({status.reason}). "
                         "Fix: `palm data prepare JOB.yaml` (or `palm run JOB.yaml`, which "
                         "prepares it on the cluster)")
    with _prepare_lock(root):  # the processes of this machine: one prepares, the rest wait
        status = store_status(data_config, base_dir)
        if status.state == "incomplete":
            raise still_being_prepared(root)
        if status.state != "current":
            _prepare_here(data_config, base_dir, status.reason)
    return root


def open_sources(data_config: DataConfig, base_dir: Path, tokenizer,
                 resolved: Sequence[SourceConfig], *, process_count: int = 1) -> list[Source]:
    """Every resolved source of the job's store, as a view over its shards (nothing copied)."""
    root = ensure_current(data_config, base_dir, process_count=process_count)
    store = TokenStore.open(root)
    if not store.complete:
        raise still_being_prepared(root)
    if store.manifest.tokenizer_sha256 != tokenizer.sha256:
        raise StoreError(f"{root}: prepared with tokenizer sha256 "
                         f"{store.manifest.tokenizer_sha256[:16]}..., the job's "
                         f"({tokenizer.path}) is {tokenizer.sha256[:16]}.... Fix: point "
                         "data.store elsewhere, or delete it and prepare it again")
    sources = []
    for source in resolved:
        tokens = store.source(source.name)  # StoreError names a missing source
        stats = store.manifest.sources[source.name].get("stats") or {}
        sources.append(Source(source.name, tokens, {"documents": 0, "bad": {}, **stats}))
    return sources


def read_async(tokens, start: int, stop: int) -> list:
    """Futures (anything with .result()) of the pieces of tokens[start:stop]."""
    if hasattr(tokens, "read_async"):
        return tokens.read_async(start, stop)
    return [_Ready(np.asarray(tokens[start:stop]))]


class _Ready:
    def __init__(self, value: np.ndarray):
        self.value = value

    def result(self) -> np.ndarray:
        return self.value


def read_windows(windows: Sequence[tuple[Any, int, int]], length: int) -> np.ndarray:
    """int32 [len(windows), length]: every (tokens, start, stop) window, read concurrently.

    All reads are issued before any is waited on, so a batch's rows cost about one round
    trip to the store (gs:// included) instead of one per row.
    """
    out = np.empty((len(windows), length), np.int32)
    pending = [read_async(tokens, start, stop) for tokens, start, stop in windows]
    for row, futures in enumerate(pending):
        position = 0
        for future in futures:
            piece = np.asarray(future.result())
            out[row, position:position + len(piece)] = piece
            position += len(piece)
        if position != length:
            raise ValueError(f"window {row} read {position} tokens, expected {length}")
    return out
