"""Every second of a restart, by cause: the `restart` record and the goodput file's list.

A restarted worker group (attempt > 0) writes one `restart` record when its first step
finishes, with the names of ml-goodput-measurement's badput types:

    recovery_s                 failure -> first step finished after the restart, the sum of:
      infrastructure_recovery_s  failure -> this process started (Ray Train sees the dead
                                 worker, tears the group down, places and spawns a new one)
      initialization_s           process start -> Trainer ready (imports, jax.distributed,
                                 mesh, pipeline and checkpointer opened)
      checkpoint_restore_s       the restore (or the init when no checkpoint exists)
      program_startup_s          the first step's compile (or cache load) and run
      data_loading_s             waiting for the first batch
      other_s                    the rest (hooks, metrics)
    wasted_progress_s          the seconds of the steps lost with the failure (run before it,
                               after the restored checkpoint: they are computed again), not
                               inside recovery_s; `recomputed_steps` counts them

The goodput file's totals get the same split: its reload charges the whole gap since its
last save to "restart"; the lost steps move to "recomputation" and this process's start-up
to "startup", so "restart" keeps the infrastructure's share.

The failure's time is the previous attempt's last sign of life: its newest record in
metrics.jsonl, or a fault marker (supervise/faults.py writes one just before a kill),
whichever is newer. A host dies at most one step after its last record, so recovery_s
overstates by at most a step. Only process 0 writes metrics, so only it keeps this account.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from palm_platform.hook_protocol import Hook, StepInfo
from palm_platform.metrics.goodput import GoodputTracker
from palm_platform.supervise.supervision import Supervision

if TYPE_CHECKING:
    from palm_platform.metrics.sink import MetricsSink

# Ours -> ml-goodput-measurement's BadputType (goodput_utils.py), for the goodput event.
GOODPUT_NAMES = {
    "startup": "initialization",  # the launch, imports, jax.distributed, restore-or-init
    "compile": "program_startup",
    "data": "data_loading",
    "checkpoint": "checkpoint_save",
    "recomputation": "wasted_progress",
    "restart": "infrastructure_recovery",
}


def by_goodput_name(badput_s: dict[str, float]) -> dict[str, float]:
    """A goodput summary's badput seconds under ml-goodput-measurement's names (others as
    they are: degraded, eval, other)."""
    out: dict[str, float] = {}
    for cause, seconds in badput_s.items():
        name = GOODPUT_NAMES.get(cause, cause)
        out[name] = out.get(name, 0.0) + seconds
    return dict(sorted(out.items()))


def preempted_since(run_dir: Path, since_unix: float) -> int | None:
    """The step of the newest `preempt` record written at or after `since_unix` when the
    group stopped there (no step trained after it), or None.

    An elastic job's workers return after a preemption's save and `palm run` launches the
    group again at the size the cluster has then (a fixed-size job's group restarts in
    place: no relaunch, and it trains past the preemption). Neither spends
    `faults.max_restarts`, which exists to end crash loops: a preemption loses nothing (the
    agreed step is saved), and a pod job can see one every few hours for weeks.
    """
    from palm_platform.metrics.sink import read_records

    try:
        records = [r for r in read_records(run_dir) if r.get("time", 0.0) >= since_unix]
    except FileNotFoundError:  # the workers never got to write one
        return None
    preempts = [r["step"] for r in records if r.get("kind") == "preempt"]
    trained = max((r["step"] for r in records if r.get("kind") == "step"), default=None)
    if not preempts or (trained is not None and trained > preempts[-1]):
        return None
    return preempts[-1]


def last_sign_of_life(run_dir: Path, before_unix: float,
                      restored_step: int | None = None) -> tuple[float | None, int | None, float]:
    """(time of the previous attempt's newest record or fault marker, its newest step, the
    seconds it spent on steps after `restored_step`: the progress the failure wasted)."""
    from palm_platform.metrics.sink import read_records
    from palm_platform.run_dir import RunDir

    try:
        records = [r for r in read_records(run_dir) if r["time"] < before_unix]
    except FileNotFoundError:
        records = []
    times = [r["time"] for r in records]
    times += [m.stat().st_mtime for m in RunDir(run_dir).faults.glob("*.fired")
              if m.stat().st_mtime < before_unix]
    steps = [r for r in records if r["kind"] == "step"]
    wasted = 0.0
    if steps and restored_step is not None:
        at_restore = [r["time"] for r in steps if r["step"] == restored_step]
        if at_restore and steps[-1]["step"] > restored_step:
            wasted = steps[-1]["time"] - at_restore[-1]
    newest = max(r["step"] for r in steps) if steps else None
    return (max(times) if times else None), newest, wasted


class RestartAccountHook(Hook):
    """Writes the `restart` record of a restarted group (attempt > 0) at its first finished
    step. `marks`: the Trainer's start-up marks (the worker's, then the Trainer's own)."""

    def __init__(self, goodput: GoodputTracker, sink: MetricsSink, run_dir: Path,
                 supervision: Supervision, marks: dict[str, float], attempt: int):
        self.goodput, self.sink, self.run_dir = goodput, sink, run_dir
        self.supervision, self.marks, self.attempt = supervision, marks, attempt
        self.pending = supervision.writes  # process 0: the one that writes metrics

    def on_start(self, step: int) -> None:
        if not self.pending:
            return
        goodput, marks = self.goodput, self.marks
        marks.setdefault("process_started", marks["trainer_init"])  # one-process restarts
        self.failed_at, last_step, self.wasted_s = last_sign_of_life(
            self.run_dir, marks["process_started"], step)
        self.restored_step = step
        self.recomputed = max((last_step or step) - step, 0)
        # The goodput file charged the whole gap since its last save to "restart": the lost
        # steps and this process's start-up are in it; give them their own causes.
        already = self.supervision.rolled_back_s  # lost steps the goodput file had counted
        goodput.move(self.wasted_s - already, from_cause="restart", to_cause="recomputation")
        goodput.move(marks["trainer_ready"] - marks["process_started"], from_cause="restart",
                     to_cause="startup")
        self.badput_at_start = dict(goodput.summary()["badput_s"])

    def on_step(self, info: StepInfo) -> None:
        if not self.pending:
            return
        self.pending = False
        marks, now = self.marks, time.time()
        failed_at = self.failed_at if self.failed_at is not None else marks["process_started"]
        badput = self.goodput.summary()["badput_s"]
        data_s = badput.get("data", 0.0) - self.badput_at_start.get("data", 0.0)
        parts = {
            "infrastructure_recovery_s": marks["process_started"] - failed_at,
            "initialization_s": marks["trainer_ready"] - marks["process_started"],
            "checkpoint_restore_s": marks["restored"] - marks["trainer_ready"],
            "program_startup_s": info.metrics["step_s"],
            "data_loading_s": data_s,
        }
        recovery_s = now - failed_at
        parts["other_s"] = max(recovery_s - sum(parts.values()), 0.0)
        record = {"recovery_s": round(recovery_s, 3),
                  **{k: round(max(v, 0.0), 3) for k, v in parts.items()},
                  "wasted_progress_s": round(self.wasted_s, 3),
                  "recomputed_steps": self.recomputed}
        self.goodput.record_restart(self.restored_step, record)
        self.sink.event("restart", self.restored_step, attempt=self.attempt, alert=True, **record)
