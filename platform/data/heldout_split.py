"""The held-out split: whole documents of each source, chosen by seed, never trained on.

A source's token stream is every document followed by EOS (data/store.py), so document d is the d-th
EOS-terminated run. The token store records each document's end (its `ends` arrays), so the split
reads the bounds of the held-out documents only, never the tokens. Held out: a seeded permutation's
first k documents (k = fraction x documents, at least 1 when a source has two or more). The choice
depends on the seed and the document count only, never on hosts or shards; it is recorded in the run
folder (`eval_split.json`) at the first start and read back at every restart, so a restart or a
different host count uses exactly the same documents, and a source whose document count changed is
an error rather than a silent new split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from palm_platform.atomic_write import write_atomic
from palm_platform.data.pipeline import derive_seed
from palm_platform.data.store_sources import Source
from palm_platform.run_dir import RunDir

log = logging.getLogger("palm")

SPLIT_FILE = RunDir(Path()).eval_split.name


_SCAN_CHUNK = 1 << 24  # tokens read at a time when looking for document ends


def document_ends(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Positions of every EOS: document d is tokens[ends[d-1] + 1 : ends[d] + 1].

    Scanned in chunks, so a memory-mapped source is never read into memory whole.
    """
    found = [np.flatnonzero(np.asarray(tokens[i : i + _SCAN_CHUNK]) == eos_id) + i
             for i in range(0, len(tokens), _SCAN_CHUNK)]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


class SpanTokens:
    """Some spans of a token array, read as one array (len and slices), without copying.

    PackedSequences needs only `len` and `[a:b]`; the spans are gathered on each read, so a
    source of hundreds of billions of tokens minus its held-out documents stays on disk.
    """

    def __init__(self, tokens: np.ndarray, spans: list[tuple[int, int]]):
        self._tokens = tokens
        spans = [(a, b) for a, b in spans if b > a]
        self._starts = np.asarray([a for a, _ in spans], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum([b - a for a, b in spans])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _ranges(self, a: int, b: int) -> list[tuple[int, int]]:
        """The [start, stop) ranges of the underlying tokens that [a, b) here covers."""
        ranges, i = [], int(np.searchsorted(self._offsets, a, side="right")) - 1
        while a < b:
            n = min(b, int(self._offsets[i + 1])) - a
            source = int(self._starts[i]) + a - int(self._offsets[i])
            ranges.append((source, source + n))
            a, i = a + n, i + 1
        return ranges

    def read_async(self, a: int, b: int) -> list:
        """Futures of the pieces of [a, b) (the pipeline reads a batch's windows at once)."""
        from palm_platform.data.store_sources import read_async

        return [
            f for start, stop in self._ranges(a, b) for f in read_async(self._tokens, start, stop)
        ]

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, _ = key.indices(len(self))
        pieces = [np.asarray(self._tokens[start:stop]) for start, stop in self._ranges(a, b)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.asarray(self._tokens[:0]).dtype)


def choose_heldout(num_documents: int, fraction: float, seed: int, source: str) -> list[int]:
    """Sorted indices of the held-out documents of one source."""
    if num_documents < 2:
        return []
    count = min(max(1, round(fraction * num_documents)), num_documents - 1)
    order = np.random.default_rng(derive_seed(seed, "heldout", source)).permutation(num_documents)
    return sorted(int(i) for i in order[:count])


def _document_bounds(tokens, eos_id: int):
    """(document count, ends(documents) -> their EOS positions) of a source's tokens.

    A token store's source (store.SourceTokens) knows both without reading its tokens; any
    other array (tests, eval sets) is scanned once for its EOS tokens.
    """
    if hasattr(tokens, "document_ends"):
        return tokens.num_documents, tokens.document_ends
    ends = document_ends(tokens, eos_id)
    return len(ends), lambda documents: ends[np.asarray(documents, np.int64)]


def _spans(end_of, total: int, held: list[int]) -> tuple[list, list]:
    """(kept spans, held-out spans) of token positions for the held-out document indices;
    `end_of(documents)` gives documents' EOS positions."""
    wanted = sorted({d - 1 for d in held if d} | set(held))
    ends = dict(zip(wanted, (int(e) for e in end_of(wanted)), strict=True))
    kept, heldout, position = [], [], 0
    for d in held:
        start, end = (ends[d - 1] + 1 if d else 0), ends[d] + 1
        kept.append((position, start))
        heldout.append((start, end))
        position = end
    kept.append((position, total))
    return kept, heldout


@dataclass(frozen=True)
class SplitSources:
    train: list[Source]  # tokens: SpanTokens views without the held-out documents
    heldout: dict[str, SpanTokens]  # source name -> its held-out documents' tokens
    record: dict


def split_sources(sources: list[Source], eos_id: int, fraction: float, seed: int,
                  recorded: dict | None) -> SplitSources:
    """Training sources without their held-out documents, and those documents' tokens.

    `recorded` (a run folder's earlier split) wins over a fresh choice; a source whose
    document count differs from the record raises ValueError naming it. Tokens after the
    last EOS (none in a token store) stay in training.
    """
    train, heldout, record = [], {}, {"seed": seed, "fraction": fraction, "sources": {}}
    for source in sources:
        n, end_of = _document_bounds(source.tokens, eos_id)
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
        kept, held = _spans(end_of, len(source.tokens), chosen)
        train.append(replace(source, tokens=SpanTokens(source.tokens, kept)))
        heldout[source.name] = SpanTokens(source.tokens, held)
        record["sources"][source.name] = {"documents": n, "heldout": chosen,
                                          "heldout_tokens": len(heldout[source.name])}
    return SplitSources(train, heldout, record)


def read_recorded_split(run_dir: Path, process_index: int) -> dict | None:
    """Host 0's recorded split, broadcast to every host (only host 0 has the run folder)."""
    from palm_platform.multihost import broadcast_text

    path = RunDir(Path(run_dir)).eval_split
    local = path.read_text() if process_index == 0 and path.exists() else ""
    shared = broadcast_text(local)
    return json.loads(shared) if shared else None


def write_split(run_dir: Path, record: dict) -> None:
    path = RunDir(Path(run_dir)).eval_split
    if not path.exists():
        write_atomic(path, json.dumps(record))  # a kill mid-write must not leave half a split
