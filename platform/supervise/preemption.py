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
numbers: the loop asks every hook with state whether it is `due` once per step.
"""

from __future__ import annotations

import logging
import signal
import threading

from palm_platform.hook_protocol import Hook

logger = logging.getLogger("palm")


class Preempted(Exception):
    """Raised on every host after the agreed step is saved; the worker exits for a restart."""

    def __init__(self, step: int):
        super().__init__(f"preempted: saved step {step}")
        self.step = step


def jax_preemption_service() -> object | None:
    """The preemption sync manager of this process's jax.distributed, or None."""
    from palm_platform.jax_private import preemption_sync_manager

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


class PreemptionHook(Hook):
    """The loop's side: asked once per step (`due`); at the agreed step it completes the save
    of both tiers (the checkpoint hook, due there too, may have saved some), waits for every
    host's save, records `preempt`, and raises `Preempted` (the worker then reports the
    run's goodput up to here and exits for a restart)."""

    needs_state = True

    def __init__(self, setup, checkpoint_hook):
        self.setup, self.checkpoint = setup, checkpoint_hook
        self.notice = PreemptionNotice.for_this_process()
        self._asked: tuple[int, bool] | None = None

    def due(self, step: int) -> bool:
        if self._asked is None or self._asked[0] != step:  # one question per step
            self._asked = (step, self.notice.reached(step))
        return self._asked[1]

    def on_step(self, info) -> None:
        from palm_platform.checkpoint.tiers import LOCAL, PERSISTENT

        s = self.setup
        saved = s.tiers.due(info.step) if self.checkpoint.due(info.step) else frozenset()
        # Both tiers: the RAM copy restores fastest when the host comes back (a maintenance
        # event keeps its RAM only if the VM survives); the persistent one survives anything.
        if s.tiers.local is not None and LOCAL not in saved:
            self.checkpoint.save_local(info)
        if PERSISTENT not in saved and info.step != s.job.train.steps:
            self.checkpoint.save_persistent(info)
        with s.goodput.phase("checkpoint"):
            s.tiers.wait_until_finished()  # every host's shards committed before the exit
        s.sink.event("preempt", info.step, alert=True, mechanism=self.notice.mechanism)
        raise Preempted(info.step)

    def close(self) -> None:
        self.notice.close()


def preempted_since(run_dir, since_unix: float) -> int | None:
    """The step of the newest `preempt` record written at or after `since_unix`, or None.

    `palm run` relaunches the worker group after a preemption itself instead of letting Ray
    Train count it as a failure: a preemption loses nothing (the agreed step is saved), so
    it must not spend `faults.max_restarts`, which exists to end crash loops; a pod job can
    see a preemption every few hours for weeks.
    """
    from palm_platform.metrics.sink import read_records

    try:
        records = read_records(run_dir)
    except FileNotFoundError:  # the workers never got to write one
        return None
    steps = [r["step"] for r in records
             if r.get("kind") == "preempt" and r.get("time", 0.0) >= since_unix]
    return steps[-1] if steps else None
