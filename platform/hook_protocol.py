"""The contract between the train loop and its hooks: `Hook`, `StepInfo`, and the two ways a
hook ends a run (`StopTraining`, `Preempted`).

A hook sees steps, never the Trainer. It states its cadence once (`every`, or `due` when the
cadence is not a plain interval) and whether it needs the train state at those steps:

    every: int = 1            on_step at steps that are multiples of it (0: never)
    needs_state: bool         on_step gets info.state (the loop reads such steps at once)
    due(step) -> bool         the cadence; `every` unless a hook says otherwise. Hooks with
                              state are asked exactly once per step, before on_step: a hook
                              may keep its answer (the checkpoint hook keeps the tiers due)
    on_start(step)            once, after the restore
    before_step(batch, array) may replace the batch's data (fault injection); -> array
    on_step(info)             a step read and spike-checked, at the hook's cadence
    on_end(step, state, summary)  once, after the last step; state and summary are None
                              when the run stopped early (Ctrl-C, a preemption)
    close()                   when the Trainer closes, also after a failed run

Hooks do not depend on their order: for each step the loop calls the hooks without state,
then those with state. A hook without state that raises `StopTraining` lets the other hooks
without state see the step first, and the hooks with state are then skipped; a hook with
state that raises `Preempted` lets the other hooks with state see the step first.

Foundation: this module imports nothing of the platform, so every component builds hooks on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class StopTraining(Exception):
    """Raised by a hook at the step the run must stop after (the run ends normally)."""

    def __init__(self, step: int):
        super().__init__(f"stop requested at step {step}")
        self.step = step


class Preempted(Exception):
    """Raised on every host after a preemption notice's agreed step is saved. A Ray worker
    raises it on, once every host has stopped, and Ray Train restarts the worker group in
    place (compat/ray.py's failure policy); an elastic job's workers return instead, and
    `palm run` launches again at the size the cluster has (ray/run.py)."""

    def __init__(self, step: int):
        super().__init__(f"preempted: saved step {step}")
        self.step = step

    def __reduce__(self):  # crosses processes (worker -> Ray Train's controller) with its step
        return (type(self), (self.step,))


@dataclass(frozen=True)
class StepInfo:
    """One step, read: what every hook gets.

    `step` counts steps done (the state after it is at `step`); `metrics` is read-only (the
    step's device metrics as floats, and `step_s`); `batch` is train/prefetch.py's `Batch`;
    `state` is set only for hooks with `needs_state`, at their due steps.
    """

    step: int
    metrics: Mapping[str, float]
    batch: Any
    compiled: bool  # this step compiled its batch shape
    pods_identical: bool | None  # None unless the job checks the pods' parameters
    state: Any = None


@dataclass
class RunSummary:
    """What `Trainer.run()` returns; hooks may add to `extra` at the end."""

    steps: int = 0
    tokens: int = 0
    final_loss: float = float("nan")
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)


class Hook:
    """No-op defaults: a hook overrides what it needs."""

    every: int = 1
    needs_state: bool = False

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def on_start(self, step: int) -> None:
        pass

    def before_step(self, batch: Any, array: Any) -> Any:
        return array

    def on_step(self, info: StepInfo) -> None:
        pass

    def on_end(self, step: int, state: Any, summary: RunSummary | None) -> None:
        pass

    def close(self) -> None:
        pass
