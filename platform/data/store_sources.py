"""The training read path's side of the token store: a job's sources, opened in place.

    open_sources(data_config, base_dir, tokenizer, resolved)
        the manifest (one read): complete -> used as it is (whether it is current, the
                                 driver decided: prepare.store_status, in `palm run`)
                                 missing  -> prepare_store(in_process=True) (library callers)
        TokenStore: the job's tokenizer, every source present
        -> [Source(name, tokens=SourceTokens view over the shards, stats from the manifest)]
    read_windows([(tokens, start, stop), ...]) -> int32 [rows, stop - start]

A training process never lists or reads the raw inputs: a store is opened by its manifest
alone, so a job trains with its raw corpus archived or deleted, and 1,536 hosts do not each
list the corpus at every start.

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

from palm_platform.data.config import DataConfig, DataConfigError, SourceConfig, resolve_path
from palm_platform.data.store import StoreError, TokenStore, read_manifest

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


def _prepare_here(data_config: DataConfig, base_dir: Path) -> None:
    from palm_platform.data.prepare import prepare_store

    check_inputs(data_config, base_dir)  # a missing path: the field that names it, first
    result = prepare_store(data_config, base_dir, in_process=True, progress=False)
    log.info("prepared token store %s in this process (it had none): %d shards, %d "
             "documents, %d tokens", result.root, result.shards, result.documents,
             result.tokens)


def check_inputs(data_config: DataConfig, base_dir: Path) -> None:
    """Every source path matches a file, else DataConfigError naming the field (a listing of
    the inputs: for the driver and for a process about to prepare, never a training host)."""
    from palm_platform.data.readers import expand_path

    for i, source in enumerate(data_config.sources):
        for j, path in enumerate(source.paths):
            try:
                expand_path(resolve_path(path, base_dir))
            except FileNotFoundError as e:
                raise DataConfigError(
                    f"data.sources[{i}].paths[{j}]",
                    f"{e} (source {source.name!r}, from {path!r} relative to {base_dir}). "
                    "Fix: correct the path or remove it from the source.",
                ) from e


def store_is_complete(data_config: DataConfig, base_dir: Path) -> bool:
    """Whether the job's store exists with a complete manifest (one small read)."""
    from palm_platform.data.prepare import store_root

    manifest = read_manifest(store_root(data_config, base_dir))
    return manifest is not None and manifest.complete


def open_store(data_config: DataConfig, base_dir: Path, *, process_count: int = 1
               ) -> TokenStore:
    """The job's store, opened by its manifest; prepared in this process first only when it
    has none (library callers, one-host runs). Never a second writer: a store still being
    prepared is an error (nothing here can tell a running prepare job from a stopped one);
    hosts of a multi-host job never prepare a gs:// store (each would tokenise the whole
    corpus): `palm run` has prepared it on the cluster before they start."""
    from palm_platform.data.prepare import store_root

    root = store_root(data_config, base_dir)
    manifest = read_manifest(root)
    if manifest is None and root.startswith("gs://"):
        if process_count != 1:
            raise StoreError(f"{root}: no token store here. Fix: `palm data prepare JOB.yaml` "
                             "(or `palm run JOB.yaml`, which prepares it on the cluster)")
        _prepare_here(data_config, base_dir)
        manifest = read_manifest(root)
    elif manifest is None or not manifest.complete:  # a process of this machine may be
        if manifest is None:  # preparing it: wait for its lock, then look again
            check_inputs(data_config, base_dir)  # before anything is written, the lock too
        with _prepare_lock(root):  # the processes of this machine: one prepares, the rest wait
            manifest = read_manifest(root)
            if manifest is None:
                _prepare_here(data_config, base_dir)
                manifest = read_manifest(root)
    if manifest is None or not manifest.complete:
        raise still_being_prepared(root)
    return TokenStore(root, manifest)


def open_sources(data_config: DataConfig, base_dir: Path, tokenizer,
                 resolved: Sequence[SourceConfig], *, process_count: int = 1) -> list[Source]:
    """Every resolved source of the job's store, as a view over its shards (nothing copied)."""
    store = open_store(data_config, base_dir, process_count=process_count)
    root = store.root
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
