"""Preemption notices: a SIGTERM to any host makes every host stop after one agreed step.

GCE sends SIGTERM to a TPU VM's processes some seconds before maintenance or a preemption.
Whatever host gets it, all hosts must save the same step (a checkpoint is one collective
write) and then leave, so the restart recomputes nothing:

    notice = PreemptionNotice.for_this_process()
    ... after every step k, on every host:  if notice.reached(k): save step k, exit

Multi-process jobs use JAX's preemption service (`jax.distributed` starts it by default):
its C++ notifier catches SIGTERM in any thread, tells the coordination service, and
`multihost_utils.reached_preemption_sync_point(k)` returns True on every host at the same
step (the highest step any host had reached, plus one). Checked here: it works inside Ray
Train workers on the local fake-TPU cluster (gloo on CPU), where the train function runs
on a thread and Python's `signal.signal` cannot be used (Ray's own SIGTERM handler would
end the worker instead). One-process runs (`palm run --direct`, one-host jobs, which skip
jax.distributed) have nothing to agree on: a Python SIGTERM handler sets a flag, when the
process owns its main thread.

The step is only agreed if every host calls `reached` once per step with the same step
numbers: `Checkpoints.due` (checkpoints.py) asks it, and the loop asks the checkpoint hook
once per step.
"""

from __future__ import annotations

import signal
import threading


def jax_preemption_service() -> object | None:
    """The preemption sync manager of this process's jax.distributed, or None."""
    from palm_platform.compat.jax import preemption_sync_manager

    return preemption_sync_manager()


class PreemptionNotice:
    """`reached(step)`: has a SIGTERM reached some host, and is `step` the agreed one?"""

    def __init__(self, *, use_jax: bool):
        self.use_jax = use_jax
        self.noticed = False  # one-process runs: set by the SIGTERM handler
        self.mechanism = "jax" if use_jax else "none"
        self._previous = None
        if not use_jax and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self.mechanism = "signal"

    def close(self) -> None:
        """Give SIGTERM back to whoever had it (the CLI's default: exit)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    @classmethod
    def for_this_process(cls) -> PreemptionNotice:
        import jax

        return cls(use_jax=jax.process_count() > 1 and jax_preemption_service() is not None)

    def _on_sigterm(self, signum, frame) -> None:
        self.noticed = True

    def reached(self, step: int) -> bool:
        if self.use_jax:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.noticed
