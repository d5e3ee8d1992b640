"""Which global sequences a batch holds, computed from a data pipeline state dict.

The pipeline (`palm_platform.data.pipeline.Pipeline`) counts its position in global
sequences and never yields sequences inside its skip ranges. Rollback planning and batch
poisoning need the indices of a batch from a *recorded* state (`pipeline.get_state()` taken
just before the batch was read) without a live pipeline: they rebuild the pipeline's
`SkipRanges` from that state; `tests/supervise/test_skip_ranges.py` checks them against
the pipeline.
"""

from __future__ import annotations

import numpy as np

from palm_platform.data.skips import SkipRanges


def first_unskipped(data_state: dict) -> int:
    """The global index of the first sequence the next batch will read."""
    return SkipRanges.of_state(data_state).first_unskipped(int(data_state["next_sequence"]))


def batch_sequence_indices(data_state: dict, global_batch_size: int) -> np.ndarray:
    """int64 [global_batch_size]: the global indices of the next batch, skips honoured."""
    indices, _ = SkipRanges.of_state(data_state).take(int(data_state["next_sequence"]),
                                                      global_batch_size)
    return indices
