"""The token cache the token store replaced, kept only as the tests' reference.

Tokenises a source in one process into a flat int32 file (each document's tokens then the
end-of-document token, files in order) and memory-maps it: the flat array a store's source
must equal, token for token (tests/data/test_data_prepare.py,
tests/data/test_data_store_batches.py).
Not part of the package: training reads the token store (palm_platform.data.store).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from palm_platform.atomic_write import atomic_open, write_atomic
from palm_platform.data import readers
from palm_platform.data.config import SourceConfig
from palm_platform.data.documents import TOKEN_DTYPE, LengthLimit, tokenize_documents
from palm_platform.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_CACHE_VERSION = 2  # 2: document-length limit in the key


@dataclass(frozen=True)
class CachedSource:
    """A source's tokens (memory-mapped, read-only) and what reading it found."""

    name: str
    tokens: np.ndarray
    stats: dict
    cache_path: Path


def source_files(source: SourceConfig) -> list[str]:
    """All files of a (resolved) source; FileNotFoundError names the path that matched none."""
    files: list[str] = []
    for path in source.paths:
        files.extend(readers.expand_path(path))
    return files


def cache_key(source: SourceConfig, files: list[str], tokenizer: Tokenizer,
              limit: LengthLimit) -> str:
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
    source: SourceConfig, tokenizer: Tokenizer, cache_dir: Path,
    limit: LengthLimit | None = None,
) -> CachedSource:
    """The source's cached tokens, tokenising it first if no valid cache exists.

    Every JAX process of a machine calls this for the same sources at the same time; an
    exclusive lock file per cache entry makes one of them tokenise while the others wait
    and then read its result (before: every worker tokenised the source again, and logged
    its bad records again). fcntl.flock is the standard library's lock; the cache folder is
    local to the machine, where flock works.
    """
    import fcntl

    limit = limit or LengthLimit()
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
                meta = _build(source, files, tokenizer, tokens_path, meta_path, limit)
    tokens = (
        np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r")
        if meta["num_tokens"]
        else (np.zeros(0, TOKEN_DTYPE))
    )
    return CachedSource(source.name, tokens, meta["stats"], tokens_path)


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
    limit: LengthLimit,
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
            for array in tokenize_documents(documents, path, tokenizer, stats, limit):
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
