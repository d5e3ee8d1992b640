"""`palm data prepare`: tokenise a job's sources into its token store (store.py).

    plan units (prepare_units.py, the driver: a listing and Parquet footers, in input order)
      -> skip units whose shard is committed (same fingerprint and tokenizer: zero redone)
      -> manifest (complete=false) written before any work, so `palm data info` sees a store
      -> missing units tokenised on Ray (prepare_ray.py) or here (`in_process`), each
         committed as a shard with its sidecar (prepare_shard.py), in any order
      -> manifest (complete=true): per-shard counts and per-source merged read stats,
         read back from the sidecars

The store is a pure function of the inputs, the job's data settings and the tokenizer;
neither the worker count nor the order in which units finish changes a byte of it.
`store_status` says whether a job's store is current from a listing of the inputs and one
manifest read, without reading input bytes or Parquet footers, so `palm run` can ask it
on every start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from palm_platform.data import readers, store
from palm_platform.data.config import DataConfig, SourceConfig, resolve_path
from palm_platform.data.documents import LengthLimit, default_cache_dir
from palm_platform.data.prepare_units import PrepareInputError, Unit, plan_source, source_listing
from palm_platform.data.tokenizer import Tokenizer, read_model

log = logging.getLogger(__name__)

__all__ = ["PrepareInputError", "PrepareInterrupted", "PrepareResult", "StoreStatus",
           "prepare_store", "store_root", "store_status"]


@dataclass(frozen=True)
class StoreStatus:
    """What a job's store is, cheaply found (a listing of the inputs and one manifest read)."""

    state: Literal["current", "missing", "incomplete", "stale"]
    root: str
    reason: str  # one line for operators: why it is not current, naming the source
    # "current" without the inputs re-checked (they are gone or unreadable): one line saying
    # so, for `palm run` to print; the store is used as it is
    unchecked: str | None = None


class PrepareInterrupted(KeyboardInterrupt):
    """Ctrl-C during a prepare: the workers are stopped; committed shards are kept, and a
    rerun of the same command skips them."""

    def __init__(self, root: str, committed: int, total: int):
        super().__init__(f"{root}: stopped; {committed} of {total} shards committed")
        self.root, self.committed, self.total = root, committed, total

    def message(self, command: str) -> str:
        return (f"{self.root}: stopped; {self.committed} of {self.total} shards committed "
                f"(kept). Resume: `{command}`")


@dataclass(frozen=True)
class PrepareResult:
    root: str
    shards: int
    written: int
    skipped: int
    documents: int
    tokens: int
    tokens_per_s: float
    digest: str
    # source -> merged read stats (documents, bad per kind, first_bad): the data-quality line
    stats: dict = field(default_factory=dict)


def _resolved(data_config: DataConfig, base_dir: Path) -> list[SourceConfig]:
    return [s.model_copy(update={"paths": [resolve_path(p, base_dir) for p in s.paths]})
            for s in data_config.sources]


def _limit(data_config: DataConfig) -> LengthLimit:
    return LengthLimit(data_config.max_document_chars, data_config.long_documents)


def _tokenizer_sha256(data_config: DataConfig, base_dir: Path) -> str:
    model, _ = read_model(resolve_path(data_config.tokenizer, base_dir))
    return hashlib.sha256(model).hexdigest()


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _source_config(source: SourceConfig, limit: LengthLimit) -> dict:
    """What decides a source's tokens besides its files' contents and the tokenizer."""
    return {"paths": list(source.paths), "format": source.format,
            "text_field": source.text_field, "limit": [limit.max_chars, limit.action]}


def store_root(data_config: DataConfig, base_dir: Path) -> str:
    """The job's store: data.store resolved against the job folder, else a folder under the
    data cache dir named by a hash of the resolved sources and the tokenizer's sha256."""
    if data_config.store:
        return resolve_path(data_config.store, base_dir).rstrip("/")
    cache = (resolve_path(data_config.cache_dir, base_dir) if data_config.cache_dir
             else str(default_cache_dir()))
    limit = _limit(data_config)
    key = _hash({"sources": {s.name: _source_config(s, limit)
                             for s in _resolved(data_config, base_dir)},
                 "tokenizer": _tokenizer_sha256(data_config, base_dir)})
    return store.join(cache, f"store-{key[:20]}")


def _changed_file(recorded: list, listing: list) -> str:
    """One line naming the first input file that differs between two listings."""
    before = {path: (size, mtime) for path, size, mtime in recorded}
    now = {path: (size, mtime) for path, size, mtime in listing}
    for path, size, mtime in listing:
        if path not in before:
            return f"input file {path} was added"
        if before[path] != (size, mtime):
            return f"input file {path} changed (size {before[path][0]:,} -> {size:,}, or mtime)"
    gone = [path for path in before if path not in now]
    return f"input file {gone[0]} was removed" if gone else "input files were reordered"


def store_status(data_config: DataConfig, base_dir: Path) -> StoreStatus:
    """current / missing / incomplete / stale (tokenizer or an input file changed), from a
    listing of the inputs and one manifest read. The one function that decides a store's
    state, called on the driver only (`palm run`, `palm data prepare`, `palm data sample`):
    training processes open the manifest and never list the inputs. A complete store whose
    inputs cannot be listed (archived or deleted after preparing) is current, `unchecked`
    saying so; without a complete store a missing input is PrepareInputError."""
    root = store_root(data_config, base_dir)
    manifest = store.read_manifest(root)
    if manifest is None:
        return StoreStatus("missing", root, f"{root}: no token store yet")
    sha = _tokenizer_sha256(data_config, base_dir)
    if manifest.tokenizer_sha256 != sha:
        return StoreStatus("stale", root, f"{root}: made with tokenizer sha256 "
                           f"{manifest.tokenizer_sha256}, the job's is {sha}")
    limit = _limit(data_config)
    for source in _resolved(data_config, base_dir):
        entry = manifest.sources.get(source.name)
        if entry is None:
            return StoreStatus("stale", root, f"{root}: source {source.name!r} not prepared")
        if entry.get("config") != _source_config(source, limit):
            return StoreStatus("stale", root, f"{root}: source {source.name!r}: its paths, "
                               "format, text_field or document-length limit changed")
        try:
            listing = [list(f) for f in source_listing(source)]
        except PrepareInputError as error:
            if not manifest.complete:
                raise
            return StoreStatus("current", root, f"{root}: current", unchecked=(
                f"could not re-check the inputs ({str(error).split('. Fix')[0]}); using the "
                f"store {root} as it is"))
        if entry.get("files") != listing:
            return StoreStatus("stale", root, f"{root}: source {source.name!r}: "
                               + _changed_file(entry.get("files", []), listing))
    if not manifest.complete:
        return StoreStatus("incomplete", root, f"{root}: still being prepared (the manifest "
                           "is not complete); `palm data prepare` resumes it")
    return StoreStatus("current", root, f"{root}: current")


def merge_stats(units: list[Unit], sidecars: list[dict]) -> dict:
    """A source's read stats from its shards', in input order: counts summed, the first bad
    locations kept, byte ranges' lines made absolute (each range's line count, in its
    sidecar, offsets the next range's line numbers of the same file)."""
    merged = {"documents": 0, "bad": dict.fromkeys(readers.BAD_KINDS, 0), "first_bad": []}
    lines_before: dict[str, int] = {}
    for unit, sidecar in zip(units, sidecars, strict=True):
        stats = sidecar["stats"]
        merged["documents"] += stats["documents"]
        for kind, n in stats["bad"].items():
            merged["bad"][kind] = merged["bad"].get(kind, 0) + n
        offset = lines_before.get(unit.files[0], 0)
        for location in stats["first_bad"]:
            if unit.kind == "bytes":
                place, kind = location.rsplit(" ", 1)
                line = int(place.rpartition(":")[2])
                location = f"{unit.files[0]}:{line + offset} {kind}"
            if len(merged["first_bad"]) < readers.FIRST_BAD_KEPT:
                merged["first_bad"].append(location)
        if unit.kind == "bytes":
            lines_before[unit.files[0]] = offset + stats.get("lines", 0)
    return merged


def _check_storage(root: str, sources: list[SourceConfig], tokenizer: str) -> None:
    """gs:// needs credentials (or the emulator) and a readable bucket: palm run's checks."""
    from palm_platform.storage import preflight
    from palm_platform.storage.env import emulator_urls

    paths = {"data.store": root, "data.tokenizer": tokenizer}
    paths.update({f"data.sources[{s.name}]": p for s in sources for p in s.paths})
    gcs = {f: p for f, p in paths.items() if p.startswith("gs://")}
    if not gcs:
        return
    if not emulator_urls():
        preflight.check_credentials()
    for bucket in dict.fromkeys(preflight.bucket_of(p) for p in gcs.values()):
        first = next(f for f, p in gcs.items() if preflight.bucket_of(p) == bucket)
        preflight.check_bucket(first, gcs[first])


def _committed(root: str, units: list[Unit], sha: str) -> dict[tuple[str, str], dict]:
    """Sidecars of the planned units already committed and whole (one listing of the store,
    then their reads). A committed shard whose files differ from its sidecar's sizes (torn,
    missing) is uncommitted here, its sidecar deleted, so that it is written again: the
    rest of the store is kept."""
    listed = store.list_sizes(root)
    found = [u for u in units if f"{u.source}/{u.name}.json" in listed]

    def read(unit: Unit) -> dict | str:
        try:
            return store.read_sidecar(root, unit.source, unit.name)
        except store.StoreError:  # a torn sidecar: the shard is written again
            return "its sidecar is torn"

    with ThreadPoolExecutor(16) as pool:
        sidecars = list(pool.map(read, found))
    from palm_platform.data.prepare_shard import check_committed

    committed = {}
    for unit, sidecar in zip(found, sidecars, strict=True):
        if isinstance(sidecar, dict):
            check_committed(root, unit, sidecar, sha)
        problem = sidecar if isinstance(sidecar, str) else \
            store.file_damage(sidecar, listed, unit.source)
        if problem:
            log.warning("%s: damaged shard (%s); writing it again",
                        store.join(root, unit.source, unit.name), problem)
            store.delete_prefix(store.join(root, unit.source, unit.name) + ".json")
            continue
        committed[(unit.source, unit.name)] = sidecar
    return committed


def _manifest(sha: str, plan: dict[str, list[Unit]], configs: dict, listings: dict,
              sidecars: dict[tuple[str, str], dict] | None) -> store.Manifest:
    sources = {}
    for name, units in plan.items():
        shards = []
        for unit in units:
            entry = {"name": unit.name, "unit": unit.describe(), "fingerprint": unit.fingerprint}
            if sidecars is not None:
                sidecar = sidecars[(name, unit.name)]
                entry.update(tokens=sidecar["tokens"], documents=sidecar["documents"])
                if "files" in sidecar:  # the driver's check at each `palm run`: no sidecar read
                    entry["files"] = sidecar["files"]
                    entry["sidecar_bytes"] = len(store.sidecar_text(sidecar).encode())
            shards.append(entry)
        sources[name] = {"config": configs[name], "files": listings[name],
                         "fingerprint": _hash([configs[name], listings[name]]),
                         "shards": shards}
        if sidecars is not None:
            sources[name]["stats"] = merge_stats(units, [sidecars[(name, u.name)]
                                                         for u in units])
    return store.Manifest(sha, sources, complete=sidecars is not None)


def prepare_store(data_config: DataConfig, base_dir: Path, *, address: str | None = None,
                  workers: int | None = None, in_process: bool = False,
                  progress: bool = True) -> PrepareResult:
    """Tokenise every source's missing shards; on the Ray cluster at `address` (or
    RAY_ADDRESS, palm cluster's, else a local Ray instance), or in this process when
    `in_process` (tests and small embedded corpora in library calls).

    Bad input (a missing or unreadable file, a Parquet file without the text column, a
    store of another tokenizer, gs:// without credentials) raises before anything is
    written: PrepareInputError, store.StoreError or StorageConfigError, one line each.
    """
    started = time.perf_counter()
    root = store_root(data_config, base_dir)
    sources = _resolved(data_config, base_dir)
    tokenizer_path = resolve_path(data_config.tokenizer, base_dir)
    _check_storage(root, sources, tokenizer_path)
    model, model_path = read_model(tokenizer_path)
    sha = hashlib.sha256(model).hexdigest()
    existing = store.read_manifest(root)
    if existing is not None and existing.tokenizer_sha256 != sha:
        raise store.StoreError(
            f"{root}: made with tokenizer sha256 {existing.tokenizer_sha256}, the job's is "
            f"{sha}. Fix: point data.store elsewhere or delete the store")
    limit = _limit(data_config)
    unit_bytes = max(1, int(data_config.prepare.unit_mb * 1e6))
    listings = {s.name: source_listing(s) for s in sources}
    plan = {s.name: plan_source(s, unit_bytes, limit, listings[s.name]) for s in sources}
    configs = {s.name: _source_config(s, limit) for s in sources}
    listings = {name: [list(f) for f in listing] for name, listing in listings.items()}
    units = [u for name in plan for u in plan[name]]
    sidecars = _committed(root, units, sha)
    skipped = len(sidecars)
    store.write_manifest(root, _manifest(sha, plan, configs, listings, None))
    missing = [u for u in units if (u.source, u.name) not in sidecars]
    try:
        with _progress_bar(len(units), skipped, progress and bool(missing)) as advance:
            if in_process:
                tokenizer = Tokenizer(model, model_path)
                from palm_platform.data.prepare_shard import run_unit

                for unit in missing:
                    sidecars[(unit.source, unit.name)] = run_unit(root, unit, tokenizer)
                    advance(sidecars[(unit.source, unit.name)])
            elif missing:
                from palm_platform.data.prepare_ray import run_on_ray

                for sidecar in run_on_ray(root, missing, model, model_path, address=address,
                                          workers=workers):
                    sidecars[(sidecar["source"], sidecar["shard"])] = sidecar
                    advance(sidecar)
    except KeyboardInterrupt:  # the workers are stopped (run_on_ray's finally)
        raise PrepareInterrupted(root, len(sidecars), len(units)) from None
    manifest = _manifest(sha, plan, configs, listings, sidecars)
    manifest = dataclasses.replace(manifest, digest=store.digest(manifest, sidecars))
    store.write_manifest(root, manifest)
    written_tokens = sum(sidecars[(u.source, u.name)]["tokens"] for u in missing)
    elapsed = max(time.perf_counter() - started, 1e-9)
    return PrepareResult(
        root=root, shards=len(units), written=len(missing), skipped=skipped,
        documents=sum(s["documents"] for s in sidecars.values()),
        tokens=sum(s["tokens"] for s in sidecars.values()),
        tokens_per_s=written_tokens / elapsed,
        digest=manifest.digest,
        stats={name: manifest.sources[name]["stats"] for name in plan})


class _progress_bar:
    """A rich progress bar on a terminal (shards, documents, tokens/s, time left); a no-op
    callback otherwise."""

    def __init__(self, total: int, done: int, enabled: bool):
        import sys

        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.done = total, done
        self.documents = self.tokens = 0
        self.started = time.perf_counter()

    def __enter__(self) -> Callable[[dict], None]:
        if not self.enabled:
            return lambda sidecar: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("prepare"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("shards {task.fields[line]}"), TimeRemainingColumn(),
                            transient=False)
        self.bar.start()
        self.task = self.bar.add_task("prepare", total=self.total, completed=self.done,
                                      line="")
        return self.advance

    def advance(self, sidecar: dict) -> None:
        self.documents += sidecar["documents"]
        self.tokens += sidecar["tokens"]
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=1, line=f"{self.documents:,} documents, "
                        f"{rate / 1e6:.2f}M tokens/s")

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
