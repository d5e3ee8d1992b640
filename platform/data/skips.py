"""Skip ranges: global sequences a run never trains on (a loss spike's data, PaLM §5.1).

One type for the arithmetic that the live pipeline (`pipeline.py`) and the rollback and
poison planners (`supervise/positions.py`, from a recorded pipeline state) both need: which
index comes next, and which indices the next batch holds. NumPy only, so supervise/ can use
it without loading Grain.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

import numpy as np


class SkipRanges:
    """Sorted, disjoint, merged [start, end) ranges of global sequence indices."""

    def __init__(self, ranges: Iterable[Iterable[int]] = ()):
        self._ranges: list[list[int]] = []
        for start, end in ranges:
            self.add(int(start), int(end))

    @classmethod
    def of_state(cls, data_state: dict) -> SkipRanges:
        """The ranges of a pipeline state dict (`Pipeline.get_state()`)."""
        return cls(data_state.get("skip_ranges", []))

    def add(self, start: int, end: int) -> None:
        """Never yield [start, end); overlapping and touching ranges merge."""
        if not 0 <= start <= end:
            raise ValueError(f"bad skip range [{start}, {end})")
        if start == end:
            return
        merged: list[list[int]] = []
        for a, b in sorted([*map(tuple, self._ranges), (start, end)]):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self._ranges = merged

    def first_unskipped(self, index: int) -> int:
        """`index`, or the end of the range it falls in."""
        k = bisect.bisect_right([a for a, _ in self._ranges], index) - 1
        if k >= 0 and index < self._ranges[k][1]:
            return self._ranges[k][1]
        return index

    def take(self, index: int, count: int) -> tuple[np.ndarray, int]:
        """(int64 [count] the next `count` indices from `index` outside the ranges, the index
        after them)."""
        chunks, taken = [], 0
        starts = [a for a, _ in self._ranges]
        while taken < count:
            index = self.first_unskipped(index)
            k = bisect.bisect_right(starts, index)
            limit = starts[k] if k < len(starts) else index + count - taken
            n = min(count - taken, limit - index)
            chunks.append(np.arange(index, index + n, dtype=np.int64))
            taken += n
            index += n
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.int64)), index

    def kept_spans(self, end: int) -> list[tuple[int, int]]:
        """The non-empty [a, b) spans of [0, end) outside the ranges (what a run trained on)."""
        kept, position = [], 0
        for start, stop in self._ranges:
            if start > position:
                kept.append((position, min(start, end)))
            position = max(position, stop)
        if position < end:
            kept.append((position, end))
        return [(a, b) for a, b in kept if b > a]

    def to_list(self) -> list[list[int]]:
        return [list(r) for r in self._ranges]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return (tuple(r) for r in self._ranges)
