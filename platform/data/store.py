"""The token store: a source's tokens prepared once, in shards, read in place by every host.

Shared by the prepare job (prepare.py, which writes shards) and the training read path
(which reads windows of them); neither copies a store to local disk. Layout under a root
that is a local folder or a gs:// prefix:

    ROOT/manifest.json                 every source's shards in input order; `complete` is
                                       set, with each shard's token and document counts, only
                                       once every shard is committed
    ROOT/SOURCE/SHARD/tokens/          zarr3 int32 [tokens]: each document's tokens followed
                                       by the end-of-document token, in input order
    ROOT/SOURCE/SHARD/ends/            zarr3 int64 [documents]: the position of each
                                       document's end-of-document token in the shard
    ROOT/SOURCE/SHARD.json             the sidecar: counts, the input unit and its
                                       fingerprint, the tokenizer's sha256, the sha256 of the
                                       tokens and of the ends, every file's byte size, and the
                                       unit's read stats. Written last: a shard exists (is
                                       committed) exactly when its sidecar does

A source's token stream, its shards' tokens concatenated in manifest order, is the flat
array packing windows slide over (packing.py), so the mixture and every batch are a
function of the step and the seed alone.

Integrity, cheap and complete (TokenStore.check): the cheap check compares every shard's
files' byte sizes with its sidecar from one listing of the store, reading no data (a
truncated or missing file, a partial upload); the deep one also reads every shard and
compares the sha256 of its tokens and ends with the sidecar's. Each inner chunk carries a
crc32c (as the shard index does), so a flipped byte fails the read that meets it; a reader
that meets a damaged shard in a run raises ShardDamaged naming it, instead of TensorStore's
DATA_LOSS traceback.

Why TensorStore zarr3 (as Levanter's cache): it reads and writes gs:// in place through its
gcs driver, and its sharding codec keeps a shard's array in one object while a reader
fetches only the inner chunks (64 KiB of tokens) that a window touches. Why a manifest
written once at the end (and not a ledger read shard by shard): a training host opens a
complete store with one small read, whatever the shard count (Marin's issues report minutes
to load a 1,113-shard ledger); the sidecars are what a resumed prepare job and
`palm data info` read.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
STORE_VERSION = 1
TOKEN_DTYPE = np.dtype("<i4")
_INNER_CHUNK = 1 << 14  # tokens per inner chunk: the unit a window read fetches
_OUTER_CHUNK = 1 << 26  # tokens per zarr object (shards are smaller, so one object each)


class StoreError(ValueError):
    """A store that cannot be used as it is; the message names the store, the shard and the fix."""


# -- paths and kvstores ------------------------------------------------------------------


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def kvstore_spec(path: str) -> dict:
    """TensorStore's kvstore for a local path or a gs://bucket/prefix URL."""
    if path.startswith("gs://"):
        bucket, _, prefix = path[len("gs://"):].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/"}
    if "://" in path:
        raise StoreError(f"{path}: a token store lives in a local folder or under gs://")
    import os

    return {"driver": "file", "path": os.path.abspath(path).rstrip("/") + "/"}


def read_text(path: str) -> str | None:
    """A small file's text (local or gs://), or None when it does not exist."""
    import tensorstore as ts

    parent, _, name = path.rpartition("/")
    kv = ts.KvStore.open(kvstore_spec(parent)).result()
    result = kv.read(name).result()
    return None if result.state == "missing" else bytes(result.value).decode()


def write_text(path: str, text: str) -> None:
    """Write a small file in one piece (on GCS an object write is atomic; locally a rename)."""
    import tensorstore as ts

    parent, _, name = path.rpartition("/")
    if not path.startswith("gs://"):
        from pathlib import Path

        from palm_platform.atomic_write import write_atomic

        Path(parent).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), text)
        return
    ts.KvStore.open(kvstore_spec(parent)).result().write(name, text.encode()).result()


def list_names(prefix: str) -> list[str]:
    """Keys under a folder or gs:// prefix, relative to it (one list request)."""
    import tensorstore as ts

    kv = ts.KvStore.open(kvstore_spec(prefix)).result()
    return sorted(key.decode() for key in kv.list().result())


def list_sizes(prefix: str) -> dict[str, int]:
    """Every file under a folder or gs:// prefix, relative to it, with its byte size: one
    listing (a few paged list requests on GCS), no data read."""
    prefix = prefix.rstrip("/")
    if prefix.startswith("gs://"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(prefix)
        fs.invalidate_cache(path)  # a listing cached by an earlier call would hide damage
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        return {name[len(path) + 1:]: int(info["size"]) for name, info in found.items()
                if info.get("type") != "directory"}
    import os

    sizes = {}
    for folder, _, files in os.walk(prefix):
        for name in files:
            full = os.path.join(folder, name)
            sizes[os.path.relpath(full, prefix)] = os.path.getsize(full)
    return sizes


def delete_prefix(path: str) -> None:
    """Delete a file, or a folder and every file under it (local or gs://)."""
    path = path.rstrip("/")
    if not path.startswith("gs://"):
        import os
        import shutil

        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    import tensorstore as ts

    parent, _, name = path.rpartition("/")
    kv = ts.KvStore.open(kvstore_spec(parent)).result()
    # the folder's keys are [name + "/", name + "0"): "0" is the byte after "/"
    kv.delete_range(ts.KvStore.KeyRange(inclusive_min=name + "/",
                                        exclusive_max=name + "0")).result()
    kv.delete_range(ts.KvStore.KeyRange(inclusive_min=name, exclusive_max=name + "\0")).result()


# -- shards --------------------------------------------------------------------------------


def _array_spec(path: str, dtype: str, length: int) -> dict:
    # The outer chunk (one object) must be a multiple of the inner one.
    outer = min(_OUTER_CHUNK, max(1, -(-length // _INNER_CHUNK)) * _INNER_CHUNK)
    return {
        "driver": "zarr3",
        "kvstore": kvstore_spec(path),
        "metadata": {
            "shape": [length],
            "data_type": dtype,
            "chunk_grid": {"name": "regular",
                           "configuration": {"chunk_shape": [outer]}},
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [_INNER_CHUNK],
                # a crc32c per inner chunk: a flipped byte fails the read that meets it
                # (DATA_LOSS, then ShardDamaged), as the index's crc32c does for the index
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "crc32c"}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                 {"name": "crc32c"}],
            }}],
        },
    }


def tokens_sha256(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, TOKEN_DTYPE).tobytes()).hexdigest()


def ends_sha256(ends: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ends, "<i8").tobytes()).hexdigest()


def write_shard(root: str, source: str, shard: str, tokens: np.ndarray, ends: np.ndarray,
                sidecar: dict[str, Any]) -> dict:
    """Write one shard's arrays, then its sidecar (the commit). Returns the sidecar.

    A committed shard is never rewritten: StoreError if its sidecar exists. Arrays left by
    a writer that died before its sidecar are not committed and are replaced here.
    """
    import tensorstore as ts

    base = join(root, source, shard)
    sidecar_path = base + ".json"
    if read_text(sidecar_path) is not None:
        raise StoreError(f"{sidecar_path}: shard already committed; a committed shard is never "
                         "rewritten (delete the store to rebuild it)")
    tokens = np.ascontiguousarray(tokens, TOKEN_DTYPE)
    ends = np.ascontiguousarray(ends, np.int64)
    for name, array, dtype in (("tokens", tokens, "int32"), ("ends", ends, "int64")):
        spec = _array_spec(join(base, name), dtype, len(array))
        handle = ts.open(spec, create=True, delete_existing=True).result()
        if len(array):
            handle.write(array).result()
    # Sizes as written, read back from one listing of the shard's folder: the cheap check
    # compares them with a later listing (a torn upload or a truncated file changes a size).
    files = {f"{shard}/{name}": size for name, size in list_sizes(base).items()}
    sidecar = {**sidecar, "version": STORE_VERSION, "source": source, "shard": shard,
               "tokens": int(len(tokens)), "documents": int(len(ends)),
               "tokens_sha256": tokens_sha256(tokens), "ends_sha256": ends_sha256(ends),
               "files": files}
    write_text(sidecar_path, sidecar_text(sidecar))
    return sidecar


def sidecar_text(sidecar: dict) -> str:
    """A sidecar as written (the manifest records its length: a torn one is found cheaply)."""
    return json.dumps(sidecar, sort_keys=True)


def read_sidecar(root: str, source: str, shard: str) -> dict | None:
    """A shard's sidecar, or None when it is not committed (absent)."""
    text = read_text(join(root, source, shard) + ".json")
    if text is None:
        return None
    try:
        sidecar = json.loads(text)
    except ValueError as e:
        raise StoreError(f"{join(root, source, shard)}.json: torn sidecar ({e}). Fix: delete "
                         "it and run `palm data prepare` again") from e
    return sidecar


_READ_CACHE_BYTES = 64 << 20  # per process: shard indexes and recent inner chunks


@functools.cache
def _read_context():
    """One TensorStore context for every array a process reads: its cache keeps each
    shard's index (16 bytes per inner chunk, read from the end of the shard's object) once
    read, so a window costs one ranged read instead of two (index, then chunk); a store is
    immutable once complete, so cached data never needs rechecking."""
    import tensorstore as ts

    return ts.Context({"cache_pool": {"total_bytes_limit": _READ_CACHE_BYTES}})


def open_array(path: str):
    """A shard's zarr3 array, opened for reading (metadata read once)."""
    import tensorstore as ts

    try:
        return ts.open({"driver": "zarr3", "kvstore": kvstore_spec(path),
                        "recheck_cached_data": False}, read=True,
                       context=_read_context()).result()
    except ValueError as e:  # TensorStore's NOT_FOUND / corrupt metadata
        raise StoreError(f"{path}: missing or torn shard array ({str(e).splitlines()[0]}). "
                         "Fix: delete the shard's sidecar and run `palm data prepare` again"
                         ) from e


# -- the manifest and the store ------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    """One shard in a source's input order; counts are None until the store is complete."""

    name: str
    unit: dict
    fingerprint: str
    tokens: int | None = None
    documents: int | None = None
    files: dict | None = None  # each file's byte size (from its sidecar), once complete
    sidecar_bytes: int | None = None  # the sidecar's own size, once complete


@dataclass(frozen=True)
class Manifest:
    tokenizer_sha256: str
    # name -> {"fingerprint": str, "config": dict, "shards": [ShardEntry as dict],
    #          "stats": merged read stats (documents, bad, first_bad) once complete}
    sources: dict[str, dict]
    complete: bool = False
    digest: str | None = None  # digest(...) of the sidecars, written with `complete`

    def shards(self, source: str) -> list[ShardEntry]:
        return [ShardEntry(**entry) for entry in self.sources[source]["shards"]]

    @property
    def self_contained(self) -> bool:
        """Complete, with its digest and every shard's sizes and counts: what the cheap
        check and `palm data info` need, without reading a sidecar."""
        return self.complete and self.digest is not None and all(
            e.files is not None for s in self.sources for e in self.shards(s))

    def to_json(self) -> str:
        data = {"version": STORE_VERSION, "tokenizer_sha256": self.tokenizer_sha256,
                "complete": self.complete, "sources": self.sources}
        if self.digest is not None:
            data["digest"] = self.digest
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("version") != STORE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {STORE_VERSION}")
            return cls(data["tokenizer_sha256"], data["sources"], bool(data["complete"]),
                       data.get("digest"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{where}: not a token store manifest ({e}). Fix: delete the store "
                             "and run `palm data prepare` again") from e


def read_manifest(root: str) -> Manifest | None:
    text = read_text(join(root, MANIFEST))
    return None if text is None else Manifest.from_json(text, join(root, MANIFEST))


def write_manifest(root: str, manifest: Manifest) -> None:
    write_text(join(root, MANIFEST), manifest.to_json())


def digest(manifest: Manifest, sidecars: dict[tuple[str, str], dict]) -> str:
    """The store's digest: sha256 over every shard's tokens_sha256, sources and shards in
    order. A hash of the shards' hashes rather than one pass over the token stream, which
    would read the whole store (3 TB for palm540b) in one process; equal token streams cut
    into the same shards (the shards depend on the input, never on the worker count) give
    equal digests."""
    h = hashlib.sha256()
    for source in manifest.sources:
        for entry in manifest.shards(source):
            h.update(sidecars[(source, entry.name)]["tokens_sha256"].encode())
    return h.hexdigest()


class SourceTokens:
    """One source of a complete store as a flat token array: `len`, slices, documents.

    Reads only what a slice touches (TensorStore fetches the inner chunks), from local disk
    or gs://; shard arrays are opened on first use. This is what packing windows slide over.
    """

    def __init__(self, root: str, source: str, shards: list[ShardEntry]):
        if any(s.tokens is None for s in shards):
            raise StoreError(f"{root}: source {source!r} is not complete")
        self.root, self.source, self._shards = root, source, shards
        self._offsets = np.cumsum([0] + [s.tokens for s in shards]).astype(np.int64)
        self._doc_offsets = np.cumsum([0] + [s.documents for s in shards]).astype(np.int64)
        self._arrays: dict[tuple[int, str], Any] = {}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_documents(self) -> int:
        return int(self._doc_offsets[-1])

    def _array(self, shard: int, name: str):
        key = (shard, name)
        if key not in self._arrays:
            self._arrays[key] = open_array(join(self.root, self.source,
                                                self._shards[shard].name, name))
        return self._arrays[key]

    def read_async(self, start: int, stop: int) -> list:
        """Futures of the pieces of tokens[start:stop] (one per shard touched)."""
        futures, i = [], int(np.searchsorted(self._offsets, start, side="right")) - 1
        while start < stop:
            n = min(stop, int(self._offsets[i + 1])) - start
            local = start - int(self._offsets[i])
            futures.append(_Checked(self._array(i, "tokens")[local:local + n].read(),
                                    join(self.root, self.source, self._shards[i].name)))
            start, i = start + n, i + 1
        return futures

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a token store is read by slices")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError("a token store is read by contiguous slices")
        pieces = [f.result() for f in self.read_async(start, max(start, stop))]
        return np.concatenate(pieces).astype(TOKEN_DTYPE, copy=False) if pieces else \
            np.zeros(0, TOKEN_DTYPE)

    def document_ends(self, documents) -> np.ndarray:
        """int64 positions (in the flat stream) of these documents' end-of-document tokens.

        Reads only the `ends` entries asked for, one concurrent read per shard touched: the
        held-out split needs a few documents' bounds, never a scan of the tokens.
        """
        documents = np.asarray(documents, np.int64).reshape(-1)
        if len(documents) and not (0 <= documents.min() and documents.max() < self.num_documents):
            raise IndexError(f"documents outside [0, {self.num_documents})")
        shard_of = np.searchsorted(self._doc_offsets, documents, side="right") - 1
        out = np.empty(len(documents), np.int64)
        pending = []
        for shard in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard)
            local = documents[rows] - self._doc_offsets[shard]
            pending.append((rows, int(shard), _Checked(
                self._array(int(shard), "ends")[local].read(),
                join(self.root, self.source, self._shards[int(shard)].name))))
        for rows, shard, future in pending:
            out[rows] = np.asarray(future.result(), np.int64) + self._offsets[shard]
        return out

    def document_end(self, document: int) -> int:
        """Position (in the flat stream) of document `document`'s end-of-document token."""
        if not 0 <= document < self.num_documents:
            raise IndexError(f"document {document} not in [0, {self.num_documents})")
        i = int(np.searchsorted(self._doc_offsets, document, side="right")) - 1
        local = document - int(self._doc_offsets[i])
        read = _Checked(self._array(i, "ends")[local].read(),
                        join(self.root, self.source, self._shards[i].name))
        return int(self._offsets[i]) + int(read.result())


def tensorstore_reason(error: BaseException) -> str:
    """TensorStore's error, short: its code and its last two causes ("DATA_LOSS: ... Error
    decoding shard index: Digest mismatch"), without the file path it repeats."""
    line = str(error).splitlines()[0] if str(error) else repr(error)
    parts = line.split(": ")
    short = f"{parts[0]}: ... {': '.join(parts[-2:])}" if len(parts) > 3 else line
    return short[:200]


class _Checked:
    """A read's future whose error names its shard: TensorStore's DATA_LOSS (a torn shard
    found by its index checksum) becomes ShardDamaged, one line, no traceback to read."""

    def __init__(self, future, where: str):
        self.future, self.where = future, where

    def result(self):
        try:
            return self.future.result()
        except ValueError as e:
            raise ShardDamaged(self.where, f"a read failed ({tensorstore_reason(e)})",
                               rewritten_by_prepare=False) from None


class TokenStore:
    """A prepared token store (local folder or gs:// prefix), opened by its manifest."""

    def __init__(self, root: str, manifest: Manifest):
        self.root, self.manifest = root.rstrip("/"), manifest

    @classmethod
    def open(cls, root: str) -> TokenStore:
        manifest = read_manifest(root)
        if manifest is None:
            raise StoreError(f"{root}: no token store here ({MANIFEST} missing). Fix: "
                             "`palm data prepare JOB.yaml`")
        return cls(root, manifest)

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def source(self, name: str) -> SourceTokens:
        if not self.complete:
            raise StoreError(f"{self.root}: the store is still being prepared (its manifest "
                             "is not complete). Fix: let `palm data prepare` finish, or run it "
                             "again to resume")
        if name not in self.manifest.sources:
            raise StoreError(f"{self.root}: no source {name!r} in the store (it has "
                             f"{sorted(self.manifest.sources)}). Fix: prepare it again")
        return SourceTokens(self.root, name, self.manifest.shards(name))

    @cached_property
    def sidecars(self) -> dict[tuple[str, str], dict | None]:
        """Every shard's sidecar (None: not committed), read concurrently."""
        from concurrent.futures import ThreadPoolExecutor

        keys = [(s, e.name) for s in self.manifest.sources for e in self.manifest.shards(s)]
        with ThreadPoolExecutor(16) as pool:
            found = list(pool.map(lambda k: read_sidecar(self.root, *k), keys))
        return dict(zip(keys, found, strict=True))

    def check(self, deep: bool = False) -> None:
        """Every shard against its sidecar: ShardDamaged naming the first damaged one (in
        manifest order), StoreError for a missing one. Cheap: one listing of the store, the
        files' sizes compared with the sidecars' (no data read). `deep`: also read every
        shard and compare its tokens' and ends' sha256 with the sidecar's."""
        if deep and not self.complete:
            raise StoreError(f"{self.root}: the store is still being prepared (its manifest is "
                             "not complete); --deep checks a complete store. Fix: let `palm "
                             "data prepare` finish, then check again")
        if not deep and self.manifest.self_contained:  # the manifest and one listing
            damage = damage_in_listing(self.root, self.manifest)
            if damage is not None:
                raise damage
            return
        listed = list_sizes(self.root)
        counts = {(source, entry.name): _count_check(entry) for source in self.manifest.sources
                  for entry in self.manifest.shards(source)}
        for (source, shard), sidecar in self.sidecars.items():
            where = join(self.root, source, shard)
            if sidecar is None:
                if self.complete:
                    raise StoreError(f"{where}: shard missing (no sidecar). Fix: run "
                                     "`palm data prepare JOB.yaml` again to rebuild it")
                continue
            problem = file_damage(sidecar, listed, source) or counts[(source, shard)](sidecar)
            if problem is None and "files" not in sidecar:  # an older store: shapes only
                problem = _shape_damage(where, sidecar)
            if problem:
                raise ShardDamaged(where, problem, rewritten_by_prepare=True)
        if deep:
            from concurrent.futures import ThreadPoolExecutor

            keys = list(self.sidecars)
            with ThreadPoolExecutor(4) as pool:
                found = list(pool.map(lambda k: data_damage(self.root, *k, self.sidecars[k]),
                                      keys))
            for (source, shard), problem in zip(keys, found, strict=True):
                if problem:
                    raise ShardDamaged(join(self.root, source, shard), problem,
                                       rewritten_by_prepare=False)


def damage_in_listing(root: str, manifest: Manifest) -> ShardDamaged | StoreError | None:
    """The first shard of a complete store whose files differ from the sizes its manifest
    entry records, or whose sidecar is gone: one listing and the manifest, nothing else
    read (what `palm run` checks on the driver before any worker starts)."""
    listed = list_sizes(root)
    for source in manifest.sources:
        for entry in manifest.shards(source):
            where = join(root, source, entry.name)
            if f"{source}/{entry.name}.json" not in listed:
                return StoreError(f"{where}: shard missing (no sidecar). Fix: run `palm data "
                                  "prepare JOB.yaml` again to rebuild it")
            problem = file_damage({"files": entry.files or {}}, listed, source)
            found = listed[f"{source}/{entry.name}.json"]
            if problem is None and entry.sidecar_bytes not in (None, found):
                problem = (f"its sidecar is {found:,} bytes, the manifest says "
                           f"{entry.sidecar_bytes:,} (torn)")
            if problem:
                return ShardDamaged(where, problem, rewritten_by_prepare=True)
    return None


class ShardDamaged(StoreError):
    """A committed shard whose files or data differ from its sidecar; names it and the fix."""

    def __init__(self, where: str, problem: str, *, rewritten_by_prepare: bool):
        fix = ("Fix: `palm data prepare JOB.yaml` rewrites that shard only" if
               rewritten_by_prepare else f"Fix: delete {where}.json, then `palm data prepare "
               "JOB.yaml` rewrites that shard only")
        super().__init__(f"{where}: damaged shard: {problem}. {fix}")
        self.where = where


def file_damage(sidecar: dict, listed: dict[str, int], source: str) -> str | None:
    """What differs between a shard's files and its sidecar's sizes (`listed`: the store's
    listing, paths relative to its root); None when they agree or the sidecar has none."""
    for name, size in sidecar.get("files", {}).items():
        found = listed.get(f"{source}/{name}")
        if found is None:
            return f"file {name} missing"
        if found != size:
            return f"file {name} is {found:,} bytes, its sidecar says {size:,} (torn)"
    return None


def _count_check(entry: ShardEntry):
    """The sidecar's counts against the complete manifest's (an edited or swapped sidecar)."""
    def check(sidecar: dict) -> str | None:
        for name, recorded in (("tokens", entry.tokens), ("documents", entry.documents)):
            if recorded is not None and sidecar.get(name) != recorded:
                return (f"its sidecar says {sidecar.get(name)} {name}, the manifest "
                        f"{recorded:,}")
        return None
    return check


def _shape_damage(where: str, sidecar: dict) -> str | None:
    for name, count in (("tokens", sidecar["tokens"]), ("ends", sidecar["documents"])):
        shape = open_array(join(where, name)).shape
        if tuple(shape) != (count,):
            return f"{name}: {shape[0]:,} entries, its sidecar says {count:,} (torn)"
    return None


def _read_whole(path: str) -> np.ndarray:
    import tensorstore as ts

    return np.asarray(ts.open({"driver": "zarr3", "kvstore": kvstore_spec(path)},
                              read=True).result().read().result())


def data_damage(root: str, source: str, shard: str, sidecar: dict) -> str | None:
    """Read a shard whole and compare its tokens' (and ends') sha256 with the sidecar's."""
    base = join(root, source, shard)
    try:
        tokens = _read_whole(join(base, "tokens")) if sidecar["tokens"] else np.zeros(0)
        if tokens_sha256(tokens) != sidecar["tokens_sha256"]:
            return "its tokens' sha256 differs from its sidecar's"
        ends = _read_whole(join(base, "ends")) if sidecar["documents"] else np.zeros(0)
        if "ends_sha256" in sidecar and ends_sha256(ends) != sidecar["ends_sha256"]:
            return "its ends' sha256 differs from its sidecar's"
    except ValueError as e:  # TensorStore: DATA_LOSS, NOT_FOUND, a torn zarr.json
        return f"unreadable ({tensorstore_reason(e)})"
    return None
