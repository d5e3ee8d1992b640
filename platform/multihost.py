"""What every JAX process of a run must agree on, sent from process 0 to all.

Small helpers over `jax.experimental.multihost_utils` for values only process 0 can read
(files that live on host 0 of a TPU pod): the run folder's ledger, the held-out split, the
restart count. Each call is a collective: every process calls it, in the same order.
"""

from __future__ import annotations

import jax
import numpy as np


def broadcast_text(text: str) -> str:
    """Process 0's `text` on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    # A power-of-two size, not the text's own: each new shape compiles a new program (the
    # ledger grows at every restart, and its broadcast missed the compilation cache each
    # time, measured on the restarts of bench_soak.py --each-kind).
    padded = np.zeros(_bucket(length), np.uint8)
    padded[: len(data)] = data  # only process 0 has data; the others send zeros
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))[:length]).decode()


def _bucket(length: int, smallest: int = 256) -> int:
    return max(smallest, 1 << max(length - 1, 0).bit_length())


def broadcast_int(value: int) -> int:
    """Process 0's `value` on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
