"""A token store written directly from token ids: the tests' pre-tokenised sources.

Tests that need sources whose tokens say where they came from (one long document 3..1002,
so a sequence's first token is its position) write them as a complete store and point
`data.store` at it; the sources' paths are then only names (training reads the store alone,
never its inputs). What `palm tokenizer encode`'s ArrayRecord shards did before the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from palm_platform.data import store
from palm_platform.data.config import SourceConfig
from palm_platform.data.tokenizer import load_tokenizer


def write_token_store(root: Path, sources: dict[str, list], tokenizer: str = "builtin:default"
                      ) -> str:
    """A complete store at `root` with one shard per source: each document's ids then EOS."""
    tok = load_tokenizer(tokenizer)
    entries = {}
    for name, documents in sources.items():
        arrays = [np.asarray(d, store.TOKEN_DTYPE) for d in documents]
        lengths = np.array([len(a) + 1 for a in arrays], np.int64)
        ends = np.cumsum(lengths) - 1
        tokens = np.full(int(lengths.sum()), tok.eos_id, store.TOKEN_DTYPE)
        for array, end in zip(arrays, ends, strict=True):
            tokens[end - len(array):end] = array
        stats = {"documents": len(arrays), "bad": {}, "first_bad": []}
        sidecar = store.write_shard(str(root), name, "0", tokens, ends, {
            "unit": {"test": name}, "fingerprint": name, "tokenizer_sha256": tok.sha256,
            "stats": stats})
        entries[name] = {"config": {}, "files": [], "fingerprint": name, "stats": stats,
                         "shards": [{"name": "0", "unit": {"test": name}, "fingerprint": name,
                                     "tokens": sidecar["tokens"],
                                     "documents": sidecar["documents"]}]}
    store.write_manifest(str(root), store.Manifest(tok.sha256, entries, complete=True))
    return str(root)


def source(name: str, weight: float = 1.0) -> SourceConfig:
    """A source of a store written above (its path is only a name: never read)."""
    return SourceConfig(name=name, paths=[f"{name}.jsonl"], weight=weight)
