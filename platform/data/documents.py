"""The one document loop: each kept document of a file, tokenised, without its EOS token.

Used by `palm data prepare`'s shards (prepare_shard.py), so every shard of a source applies
the same document-length limit the same way whichever worker builds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from palm_platform.data import readers
from palm_platform.data.tokenizer import Tokenizer

_ENCODE_CHUNK_CHARS = 1 << 20  # documents are encoded in batches of about this many chars
TOKEN_DTYPE = np.dtype("<i4")


def default_cache_dir() -> Path:
    """Where a job without data.store keeps its store: $PALM_DATA_CACHE, else ~/.cache."""
    env = os.environ.get("PALM_DATA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "palm" / "data"


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


def tokenize_documents(documents: Iterable[str], path: str, tokenizer: Tokenizer,
                       stats: readers.ReadStats, limit: LengthLimit = LengthLimit(),
                       ) -> Iterator[np.ndarray]:
    """Token ids of each kept document of one file, in order, without the EOS token.
    `path` names the file (or a unit of it) in bad-record locations."""
    pending: list[str] = []
    pending_chars = 0
    for document in documents:
        for piece in limit.apply(document, path, stats.position, stats):
            pending.append(piece)
            pending_chars += len(piece)
        if pending_chars >= _ENCODE_CHUNK_CHARS:
            yield from _encode(tokenizer, pending)
            pending, pending_chars = [], 0
    yield from _encode(tokenizer, pending)


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    if not texts:
        return []
    return [np.asarray(ids, TOKEN_DTYPE) for ids in tokenizer.encode_batch(texts)]
