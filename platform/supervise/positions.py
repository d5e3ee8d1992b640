"""Which global sequences a batch holds, computed from a data pipeline state dict.

The pipeline (`palm_platform.data.pipeline.Pipeline`) counts its position in global
sequences and never yields sequences inside its skip ranges. Rollback planning and batch
poisoning need the indices of a batch from a *recorded* state (`pipeline.get_state()` taken
just before the batch was read) without a live pipeline, so the same rule is restated here
as a pure function; `tests/test_supervise_positions.py` checks it against the pipeline.
"""

from __future__ import annotations

import numpy as np


def _ranges(data_state: dict) -> list[tuple[int, int]]:
    return sorted((int(a), int(b)) for a, b in data_state.get("skip_ranges", []))


def first_unskipped(data_state: dict) -> int:
    """The global index of the first sequence the next batch will read."""
    index = int(data_state["next_sequence"])
    for start, end in _ranges(data_state):
        if start <= index < end:
            index = end
    return index


def batch_sequence_indices(data_state: dict, global_batch_size: int) -> np.ndarray:
    """int64 [global_batch_size]: the global indices of the next batch, skips honoured."""
    ranges = _ranges(data_state)
    out = np.empty(global_batch_size, np.int64)
    index, taken = int(data_state["next_sequence"]), 0
    while taken < global_batch_size:
        for start, end in ranges:
            if start <= index < end:
                index = end
        nxt = min((start for start, _ in ranges if start > index), default=None)
        n = global_batch_size - taken if nxt is None else min(global_batch_size - taken, nxt - index)
        out[taken : taken + n] = np.arange(index, index + n)
        taken += n
        index += n
    return out
