"""Compile the batch schedule's later shapes ahead of time, into the persistent cache.

Each batch size of `train.batch_schedule` is its own executable. A worker group that dies
before the schedule reaches its next batch size never compiled it, so the restart missed the
cache for exactly that train step (measured: the demo's restart hit 8 of 9 executables; the
one miss was the 32-sequence step, first needed at step 30, after the kill at step 25, and
it cost 20.8 s). Compiling those shapes once the first step runs writes them to the cache,
so a restart, and the same attempt when it gets there, loads them instead.

It runs on a thread on process 0 only: only process 0 writes JAX's persistent cache, and on
TPU hosts the host CPUs are idle while the devices run the step. Lowering and compiling
with `jit(...).lower(...).compile()` (JAX's AOT API) runs no collective, so it never
interleaves with the train step's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)


def later_batch_sizes(batch_size_at: Callable[[int], int], phase_starts: Iterable[int],
                      first_step: int, last_step: int) -> list[int]:
    """The batch sizes the run still reaches after `first_step`, other than the current one."""
    current = batch_size_at(first_step)
    sizes = []
    for start in sorted(phase_starts):
        if first_step < start < last_step:
            size = batch_size_at(start)
            if size != current and size not in sizes:
                sizes.append(size)
    return sizes


class Precompiler:
    """Starts once; compiles `sizes` with `compile_one(size)` on a daemon thread."""

    def __init__(self, compile_one: Callable[[int], None], sizes: list[int], *, enabled: bool):
        self._compile_one, self.sizes, self.enabled = compile_one, sizes, enabled and bool(sizes)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="palm-precompile", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        for size in self.sizes:
            try:
                self._compile_one(size)
            except Exception as err:  # only a lost speed-up: the loop compiles it when needed
                log.warning("ahead-of-time compile of the %d-sequence step failed: %s", size, err)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def compile_train_step(
    step_fn, abstract_state, batch_sharding, batch_size: int, seq_len: int
) -> None:
    """Lower and compile one train step for [batch_size, seq_len + 1] tokens (AOT)."""
    tokens = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32, sharding=batch_sharding)
    step_fn.lower(abstract_state, tokens).compile()
