"""Read and place the next global batches on a background thread while the step runs.

    prefetcher = Prefetcher(pipeline, first_step=step, last_step=total, batch_size_at=...,
                            place=lambda local: to_global_array(local, sharding))
    batch = prefetcher.next()     # Batch(step, batch_size, data_state, data_state_after, ...)
    prefetcher.stop()             # before anyone else touches the pipeline (restore, rollback)

While it runs the thread owns the pipeline: it reads batches for consecutive steps in
order, exactly as the loop would, so resume positions and skip ranges are unchanged. Each
`Batch` carries the pipeline state before and after its read: the loop saves
`data_state_after` with the checkpoint of that step, and hands `data_state` to the
rollback planner. The queue is small (`depth` batches) so memory stays bounded and a
rollback discards little work. An exception in the thread is re-raised by `next()` as
`PrefetchError` with the original as its cause.

Why not a library prefetcher: Grain's and Flax's prefetch iterators yield batches, but
the loop also needs the exact pipeline state of every batch and global `jax.Array`s
assembled from every host's rows; this is one small thread and a queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class PrefetchError(RuntimeError):
    """Reading or placing a batch failed on the prefetch thread (the cause is chained)."""


@dataclass
class Batch:
    step: int
    batch_size: int
    data_state: dict  # the pipeline position this batch was read from
    data_state_after: dict  # the position after it: saved with the checkpoint of step + 1
    local: np.ndarray  # this host's rows (fault injection may replace some)
    array: Any  # the global jax.Array on the mesh


_DONE = object()


class Prefetcher:
    def __init__(self, pipeline, *, first_step: int, last_step: int,
                 batch_size_at: Callable[[int], int], place: Callable[[np.ndarray], Any],
                 depth: int = 2):
        self._pipeline, self._batch_size_at, self._place = pipeline, batch_size_at, place
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(first_step, last_step),
                                        name="palm-prefetch", daemon=True)
        self._thread.start()

    def _run(self, first_step: int, last_step: int) -> None:
        try:
            for step in range(first_step, last_step):
                if self._stop.is_set():
                    return
                batch_size = self._batch_size_at(step)
                before = self._pipeline.get_state()
                local = self._pipeline.local_batch(batch_size)
                item = Batch(step, batch_size, before, self._pipeline.get_state(), local,
                             self._place(local))
                if not self._put(item):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the loop, which raises it
            self._put(error)
            return
        self._put(_DONE)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> Batch:
        """The next step's batch; waits for the thread if it is behind."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise PrefetchError(
                f"reading the next batch failed: {type(item).__name__}: {item}"
            ) from item
        if item is _DONE:
            raise PrefetchError("no batch left: the loop asked past its last step")
        return item

    def stop(self) -> None:
        """Stop the thread and drop what it read ahead; the pipeline is the caller's again."""
        self._stop.set()
        self._thread.join()
