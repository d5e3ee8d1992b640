"""The held-out split: whole documents of each source, chosen by seed, never trained on.

A source's token cache is every document followed by EOS (data/token_cache.py), so document
d is the d-th EOS-terminated run. Held out: a seeded permutation's first k documents
(k = fraction x documents, at least 1 when a source has two or more). The choice depends on
the seed and the document count only, never on hosts or shards; it is recorded in the run
folder (`eval_split.json`) at the first start and read back at every restart, so a restart
or a different host count uses exactly the same documents, and a source whose document
count changed is an error rather than a silent new split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from palm_platform.data.pipeline import derive_seed
from palm_platform.data.token_cache import SourceTokens

log = logging.getLogger("palm")

SPLIT_FILE = "eval_split.json"


def document_ids(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Per token, the index of the document it belongs to (its EOS included)."""
    is_eos = np.asarray(tokens) == eos_id
    return np.concatenate([[0], np.cumsum(is_eos)[:-1]]).astype(np.int64)


def choose_heldout(num_documents: int, fraction: float, seed: int, source: str) -> list[int]:
    """Sorted indices of the held-out documents of one source."""
    if num_documents < 2:
        return []
    count = min(max(1, round(fraction * num_documents)), num_documents - 1)
    order = np.random.default_rng(derive_seed(seed, "heldout", source)).permutation(num_documents)
    return sorted(int(i) for i in order[:count])


@dataclass(frozen=True)
class SplitSources:
    train: list[SourceTokens]
    heldout: dict[str, np.ndarray]  # source name -> its held-out documents' tokens
    record: dict


def split_sources(sources: list[SourceTokens], eos_id: int, fraction: float, seed: int,
                  recorded: dict | None) -> SplitSources:
    """Training sources without their held-out documents, and those documents' tokens.

    `recorded` (a run folder's earlier split) wins over a fresh choice; a source whose
    document count differs from the record raises ValueError naming it.
    """
    train, heldout, record = [], {}, {"seed": seed, "fraction": fraction, "sources": {}}
    for source in sources:
        doc_ids = document_ids(source.tokens, eos_id)
        n = int(doc_ids[-1]) + 1 if len(doc_ids) else 0
        previous = (recorded or {}).get("sources", {}).get(source.name)
        if previous is not None:
            if previous["documents"] != n:
                raise ValueError(
                    f"eval split: source {source.name!r} has {n} documents, the run's "
                    f"{SPLIT_FILE} recorded {previous['documents']}. Fix: restore the source's "
                    f"files, or start a new run folder")
            chosen = previous["heldout"]
        else:
            chosen = choose_heldout(n, fraction, seed, source.name)
        held = np.isin(doc_ids, np.asarray(chosen, np.int64))
        tokens = np.asarray(source.tokens)
        train.append(replace(source, tokens=tokens[~held]))
        heldout[source.name] = tokens[held]
        record["sources"][source.name] = {"documents": n, "heldout": chosen,
                                          "heldout_tokens": int(held.sum())}
    return SplitSources(train, heldout, record)


def read_recorded_split(run_dir: Path, process_index: int) -> dict | None:
    """Host 0's recorded split, broadcast to every host (only host 0 has the run folder)."""
    from palm_platform.train.loop import broadcast_text

    path = Path(run_dir) / SPLIT_FILE
    local = path.read_text() if process_index == 0 and path.exists() else ""
    shared = broadcast_text(local)
    return json.loads(shared) if shared else None


def write_split(run_dir: Path, record: dict) -> None:
    path = Path(run_dir) / SPLIT_FILE
    if not path.exists():
        path.write_text(json.dumps(record))
