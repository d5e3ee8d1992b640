"""The supervision hook: each step beats the hang watchdog, stamps liveness, checks for a stop.

Built by the Ray worker (`ray/worker.py`), which owns the three parts: the watchdog
(`watchdog.py`: no step for `faults.hang_timeout_s` -> exit, so Ray Train restarts the
group), the liveness board (`ray/liveness.py`: which host is stuck) and the stop listener
(`ray/interrupt.py`: Ctrl-C on `palm run` stops every host after the same step; its
`check` raises a `StopTraining`). A run without Ray passes none of them.
"""

from __future__ import annotations

from typing import Any

from palm_platform.hook_protocol import Hook, StepInfo
from palm_platform.supervise.watchdog import Watchdog


class SupervisionHook(Hook):
    """Every step: the watchdog's beat (started after the first step, so compiling is never
    a hang), the host's liveness step, the stop check."""

    def __init__(self, watchdog: Watchdog, board: Any | None = None, stop: Any | None = None):
        self.watchdog, self.board, self.stop = watchdog, board, stop

    def on_step(self, info: StepInfo) -> None:
        if self.watchdog.last_step is None:
            self.watchdog.start()
        self.watchdog.beat(info.step)
        if self.board is not None:
            self.board.step = info.step
        if self.stop is not None:
            self.stop.check(info.step)  # raises StopTraining at the agreed stop step

    def close(self) -> None:
        self.watchdog.stop()
        if self.board is not None:
            self.board.stop()
