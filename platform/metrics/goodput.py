"""Goodput: productive step time over wall time, and badput by cause.

    tracker = GoodputTracker()
    with tracker.phase("startup"): ...
    with tracker.phase("compile", step=0): ...           # first step: compile + run
    with tracker.phase("step", step=s): ...              # productive, remembered per step
    with tracker.phase("checkpoint"): ...
    tracker.rollback(to_step=plan.restore_step, from_step=spike.step)   # -> "recomputation"
    tracker.summary()  # {wall_s, productive_s, goodput, badput_s: {cause: s}}

Phases nest: time is charged to the innermost open phase only, so a checkpoint stall inside
a step is not counted twice. Wall time not inside any phase is badput "other".
Time of "step" phases is productive until a rollback or restart replays those steps; then it
moves to badput "recomputation" (only the last `step_history` steps are remembered; older
ones lie behind every checkpoint a rollback can reach).

Across restarts: a run's tracker is `GoodputTracker.resume(run folder's file)`, and `save()`
writes that file (the one writer): with every checkpoint save and at the end of the run. The
next attempt's load charges the wall-clock gap since the file was saved to "restart" and
continues the totals. Summaries of separate attempts can also be combined with
`merge_summaries`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from palm_platform.atomic_write import write_atomic

logger = logging.getLogger("palm")

PRODUCTIVE = "step"
RECOMPUTATION = "recomputation"
RESTART = "restart"
OTHER = "other"
STATE_VERSION = 1


class GoodputTracker:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        step_history: int = 10_000,
    ):
        self._clock = clock
        self._wall_clock = wall_clock
        self._step_history = step_history
        self._start = clock()
        self._wall_before = 0.0  # wall seconds of earlier attempts (from load_state_dict)
        self._productive = 0.0
        self._badput: dict[str, float] = {}
        self._step_seconds: OrderedDict[int, float] = OrderedDict()
        self._stack: list[tuple[str, int | None]] = []
        self._mark = self._start
        self._restarts: list[dict] = []  # each restart's seconds by cause (restart_account.py)
        self._file: Path | None = None  # the run folder's goodput file, written by `save`

    @classmethod
    def resume(cls, path: Path, *, launched_at: float | None, writes: bool) -> GoodputTracker:
        """The run's goodput so far (the run folder's file at `path`), else counted from
        `launched_at`; `save()` writes the file back when this process `writes` it."""
        tracker = cls()
        if path.exists():
            try:
                tracker.load_state_dict(json.loads(path.read_text()))
            except (ValueError, RecursionError) as error:  # torn or edited: accounting only,
                from palm_platform.yaml_safe import one_line  # never a reason not to resume

                logger.warning("%s", one_line(f"{path}: unreadable ({error}); "
                                              "goodput counts from this attempt on", 300))
        elif launched_at is not None:  # the time before this process ran (placement, spawn)
            tracker.load_state_dict({"wall_s": 0.0, "productive_s": 0.0, "badput_s": {},
                                     "saved_at_unix": launched_at}, gap_cause="startup")
        tracker._file = path if writes else None
        return tracker

    def save(self) -> None:
        """Write the goodput file (`resume`'s), the one place it is written: with every save
        of either checkpoint tier (a restart charges the time since to "restart"; written with
        persistent saves only, a restore from a newer RAM step charged the kept steps between
        the two as restart too: 11 s of each 30 s restart in a soak of 3.7 s steps) and when
        the run ends or stops."""
        if self._file is not None:
            write_atomic(self._file, json.dumps(self.state_dict()))

    # -- measuring ----------------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, name: str, *, step: int | None = None) -> Iterator[None]:
        """Charge the time inside to `name` ("step" is productive; anything else badput)."""
        if name == PRODUCTIVE and step is None:
            raise ValueError("phase('step') needs step=: rollbacks move a step's time to badput")
        self._charge()
        self._stack.append((name, step))
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def _charge(self) -> None:
        now = self._clock()
        elapsed, self._mark = now - self._mark, now
        if not self._stack:
            return
        name, step = self._stack[-1]
        self.add(name, elapsed, step=step)

    def add(self, name: str, seconds: float, *, step: int | None = None) -> None:
        """Account time measured elsewhere (e.g. a restart gap measured by the driver)."""
        if seconds < 0:
            raise ValueError(f"negative duration {seconds} for {name!r}")
        if name == PRODUCTIVE:
            if step is None:
                raise ValueError("productive time needs its step")
            self._productive += seconds
            self._step_seconds[step] = self._step_seconds.get(step, 0.0) + seconds
            self._step_seconds.move_to_end(step)
            while len(self._step_seconds) > self._step_history:
                self._step_seconds.popitem(last=False)
        else:
            self._badput[name] = self._badput.get(name, 0.0) + seconds

    def rollback(self, *, to_step: int, from_step: int | None = None,
                 cause: str = RECOMPUTATION) -> float:
        """Steps to_step..from_step (all remembered >= to_step if None) will run again:
        their productive time becomes badput `cause`. Returns the seconds moved."""
        steps = [s for s in self._step_seconds
                 if s >= to_step and (from_step is None or s <= from_step)]
        moved = sum(self._step_seconds.pop(s) for s in steps)
        self._productive -= moved
        if moved:
            self._badput[cause] = self._badput.get(cause, 0.0) + moved
        return moved

    def reclassify(self, step: int, fraction: float, *, cause: str) -> float:
        """Move `fraction` of step `step`'s productive time to badput `cause` (e.g. an
        elastic run on half its pods: half of each step is "degraded"). Returns seconds moved."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction {fraction} not in [0, 1]")
        moved = self._step_seconds.get(step, 0.0) * fraction
        if moved:
            self._step_seconds[step] -= moved
            self._productive -= moved
            self._badput[cause] = self._badput.get(cause, 0.0) + moved
        return moved

    def move(self, seconds: float, *, from_cause: str, to_cause: str) -> float:
        """Re-charge up to `seconds` of badput `from_cause` to `to_cause` (e.g. the part of a
        restart gap that was lost steps); returns the seconds moved."""
        moved = min(max(seconds, 0.0), self._badput.get(from_cause, 0.0))
        if moved:
            self._badput[from_cause] -= moved
            self._badput[to_cause] = self._badput.get(to_cause, 0.0) + moved
        return moved

    def record_restart(self, step: int, seconds_by_cause: dict) -> None:
        """Keep one restart's account (supervise/restart_account.py) with the totals."""
        self._restarts.append({"step": int(step), **seconds_by_cause})

    @property
    def restarts(self) -> list[dict]:
        return list(self._restarts)

    # -- reporting ----------------------------------------------------------------------

    def summary(self) -> dict:
        """{wall_s, productive_s, goodput, badput_s: {cause: seconds}} at this moment."""
        self._charge()
        wall = self._wall_before + (self._clock() - self._start)
        badput = dict(sorted(self._badput.items()))
        other = wall - self._productive - sum(badput.values())
        if other > 1e-9:
            badput[OTHER] = badput.get(OTHER, 0.0) + other
        return {
            "wall_s": wall,
            "productive_s": self._productive,
            "goodput": self._productive / wall if wall > 0 else 0.0,
            "badput_s": badput,
        }

    # -- persistence --------------------------------------------------------------------

    def state_dict(self) -> dict:
        """JSON-serialisable totals (open phases charged up to now)."""
        summary = self.summary()
        badput = dict(summary["badput_s"])
        badput.pop(OTHER, None)  # recomputed from wall time on load
        other = summary["wall_s"] - summary["productive_s"] - sum(badput.values())
        return {
            "version": STATE_VERSION,
            "wall_s": summary["wall_s"],
            "productive_s": self._productive,
            "badput_s": badput,
            "other_s": max(other, 0.0),
            "step_seconds": [[s, v] for s, v in self._step_seconds.items()],
            "restarts": list(self._restarts),
            "saved_at_unix": self._wall_clock(),
        }

    def load_state_dict(self, state: dict, *, gap_cause: str = RESTART) -> None:
        """Continue an earlier attempt's totals; the time since it saved counts as `gap_cause`.

        The gap holds the crash, the restart and any steps run after the state was saved
        (they are replayed from the restored checkpoint), so it is badput either way.
        """
        try:
            wall = float(state["wall_s"])
            productive = float(state["productive_s"])
            badput = {str(k): float(v) for k, v in state["badput_s"].items()}
            steps = [(int(s), float(v)) for s, v in state.get("step_seconds", [])]
            restarts = [dict(r) for r in state.get("restarts", [])]
            saved_at = state.get("saved_at_unix")
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            from palm_platform.yaml_safe import one_line, short_repr  # never echo a whole file

            raise ValueError(one_line(f"not a GoodputTracker state ({error}): "
                                      f"{short_repr(state)}", 300)) from error
        self._productive = productive
        self._badput = badput
        if state.get("other_s"):
            self._badput[OTHER] = self._badput.get(OTHER, 0.0) + float(state["other_s"])
        self._step_seconds = OrderedDict(steps)
        self._restarts = restarts
        gap = 0.0 if saved_at is None else max(self._wall_clock() - float(saved_at), 0.0)
        if gap:
            self._badput[gap_cause] = self._badput.get(gap_cause, 0.0) + gap
        self._wall_before = wall + gap
        self._start = self._mark = self._clock()
        self._stack.clear()


def merge_summaries(summaries: list[dict]) -> dict:
    """Totals over attempts (or runs) from their `summary()` dicts."""
    wall = sum(s["wall_s"] for s in summaries)
    productive = sum(s["productive_s"] for s in summaries)
    badput: dict[str, float] = {}
    for s in summaries:
        for cause, seconds in s["badput_s"].items():
            badput[cause] = badput.get(cause, 0.0) + seconds
    return {
        "wall_s": wall,
        "productive_s": productive,
        "goodput": productive / wall if wall > 0 else 0.0,
        "badput_s": dict(sorted(badput.items())),
    }
