"""Tokenise a source once into a flat int32 token file on disk, then memory-map it.

The file holds every document's tokens followed by the end-of-document (EOS) token, in the
order the files and records were read; this flat array is what packing windows slide over
(see packing.py). Random access into it is what makes a batch a pure function of its
sequence indices, as in PaLM's pipeline, which wrote its data in a random-access format.

Written by hand instead of with Grain: Grain has no "tokenise to a random-access cache"
step (its packing transforms are iterator-side and would make the position in the data a
stateful stream again). The format is a raw little-endian int32 file plus a JSON sidecar
(token count, read stats, source fingerprint), written to temporary names and renamed into
place, so concurrent processes building the same cache cannot leave a half-written one.

The cache key hashes the source's files (path, size, mtime), format, text field and the
tokenizer's sha256: editing a file or changing the tokenizer re-tokenises; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from palm_platform.atomic_write import atomic_open, write_atomic
from palm_platform.data import readers
from palm_platform.data.config import SourceConfig
from palm_platform.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_CACHE_VERSION = 2  # 2: document-length limit in the key
_ENCODE_CHUNK_CHARS = 1 << 20  # documents are encoded in batches of about this many chars
TOKEN_DTYPE = np.dtype("<i4")


@dataclass(frozen=True)
class SourceTokens:
    """A source's tokens (memory-mapped, read-only) and what reading it found."""

    name: str
    tokens: np.ndarray
    stats: dict
    cache_path: Path


def default_cache_dir() -> Path:
    env = os.environ.get("PALM_DATA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "palm" / "data"


def source_files(source: SourceConfig) -> list[str]:
    """All files of a (resolved) source; FileNotFoundError names the path that matched none."""
    files: list[str] = []
    for path in source.paths:
        files.extend(readers.expand_path(path))
    return files


@dataclass(frozen=True)
class LengthLimit:
    """Documents longer than `max_chars` are dropped or split (DataConfig.long_documents)."""

    max_chars: int = 1_000_000
    action: str = "drop"

    def apply(self, document: str, path: str, index: int, stats: readers.ReadStats) -> list[str]:
        if len(document) <= self.max_chars:
            return [document]
        stats.record_bad("too_long", path, index, f"{len(document):,} characters > "
                         f"max_document_chars {self.max_chars:,} ({self.action})")
        if self.action == "drop":
            return []
        return [document[i:i + self.max_chars] for i in range(0, len(document), self.max_chars)]


def cache_key(source: SourceConfig, files: list[str], tokenizer: Tokenizer,
              limit: LengthLimit = LengthLimit()) -> str:
    description = {
        "version": _CACHE_VERSION,
        "limit": [limit.max_chars, limit.action],
        "format": source.format,
        "text_field": source.text_field,
        "files": [readers.file_fingerprint(f) for f in files],
        "tokenizer": tokenizer.sha256,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def load_or_build(
    source: SourceConfig, tokenizer: Tokenizer, cache_dir: Path, num_threads: int = 1,
    limit: LengthLimit = LengthLimit(),
) -> SourceTokens:
    """The source's cached tokens, tokenising it first if no valid cache exists.

    Every JAX process of a machine calls this for the same sources at the same time; an
    exclusive lock file per cache entry makes one of them tokenise while the others wait
    and then read its result (before: every worker tokenised the source again, and logged
    its bad records again). fcntl.flock is the standard library's lock; the cache folder is
    local to the machine, where flock works.
    """
    import fcntl

    files = source_files(source)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)
    stem = Path(cache_dir) / f"{safe_name}-{cache_key(source, files, tokenizer, limit)}"
    tokens_path, meta_path = stem.with_suffix(".tokens"), stem.with_suffix(".json")
    meta = _read_meta(meta_path, tokens_path)
    if meta is None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with open(stem.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            meta = _read_meta(meta_path, tokens_path)  # built by another process meanwhile?
            if meta is None:
                meta = _build(source, files, tokenizer, tokens_path, meta_path, num_threads, limit)
    tokens = (
        np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r")
        if meta["num_tokens"]
        else (np.zeros(0, TOKEN_DTYPE))
    )
    return SourceTokens(source.name, tokens, meta["stats"], tokens_path)


def _read_meta(meta_path: Path, tokens_path: Path) -> dict | None:
    """The sidecar of a complete cache, or None (absent, torn, edited): then it is rebuilt."""
    try:
        meta = json.loads(meta_path.read_text())
        if not (isinstance(meta, dict) and type(meta.get("num_tokens")) is int
                and meta["num_tokens"] >= 0 and isinstance(meta.get("stats"), dict)):
            return None
        expected_bytes = meta["num_tokens"] * TOKEN_DTYPE.itemsize
        if expected_bytes and tokens_path.stat().st_size != expected_bytes:
            return None
        return meta
    except (OSError, ValueError, RecursionError):
        return None


def _build(
    source: SourceConfig,
    files: list[str],
    tokenizer: Tokenizer,
    tokens_path: Path,
    meta_path: Path,
    num_threads: int,
    limit: LengthLimit = LengthLimit(),
) -> dict:
    tokens_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stats = readers.ReadStats()
    num_tokens = 0
    eos = np.array([tokenizer.eos_id], TOKEN_DTYPE).tobytes()
    # Tokens first, then the meta file that marks the cache valid: each replaced atomically.
    with atomic_open(tokens_path, "wb") as out:
        for path in files:
            documents = readers.iter_documents(path, source.format, source.text_field, stats)
            for array in tokenize_documents(documents, path, tokenizer, stats, limit,
                                            num_threads):
                out.write(array.tobytes())
                out.write(eos)
                num_tokens += len(array) + 1
    meta = {"num_tokens": num_tokens, "stats": stats.as_dict(), "files": len(files)}
    write_atomic(meta_path, json.dumps(meta))
    log.info(
        "tokenised source %r: %d files, %d documents, %d tokens in %.1f s -> %s; bad: %s",
        source.name,
        len(files),
        stats.documents,
        num_tokens,
        time.perf_counter() - start,
        tokens_path,
        {k: v for k, v in stats.bad.items() if v},
    )
    return meta


def tokenize_documents(
    documents: Iterable[str | np.ndarray],
    path: str,
    tokenizer: Tokenizer,
    stats: readers.ReadStats,
    limit: LengthLimit = LengthLimit(),
    num_threads: int = 1,
) -> Iterator[np.ndarray]:
    """Token ids of each kept document of one file, in order, without the EOS token.

    The one document loop of both the local cache (above) and `palm data prepare`'s shards
    (prepare_shard.py): the same length limit, the same pre-tokenised id check, so a source's
    tokens are bitwise the same whichever builds them. `path` names the file (or a unit of
    it) in bad-record locations.
    """
    pending: list[str] = []
    pending_chars = 0
    for index, document in enumerate(documents, start=1):
        if isinstance(document, np.ndarray):  # pre-tokenised
            if document.size and (document.min() < 0 or document.max() >= tokenizer.vocab_size):
                stats.record_bad(
                    "bad_tokens",
                    path,
                    index,
                    f"ids outside [0, {tokenizer.vocab_size}) of {tokenizer.path}",
                )
                continue
            yield document.astype(TOKEN_DTYPE)
            continue
        for piece in limit.apply(document, path, stats.position, stats):
            pending.append(piece)
            pending_chars += len(piece)
        if pending_chars >= _ENCODE_CHUNK_CHARS:
            yield from _encode(tokenizer, pending, num_threads)
            pending, pending_chars = [], 0
    yield from _encode(tokenizer, pending, num_threads)


def _encode(tokenizer: Tokenizer, texts: list[str], num_threads: int) -> list[np.ndarray]:
    if not texts:
        return []
    return [np.asarray(ids, TOKEN_DTYPE) for ids in tokenizer.encode_batch(texts, num_threads)]
