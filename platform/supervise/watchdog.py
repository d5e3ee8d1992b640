"""A hang watchdog: no `beat` for `timeout_s` seconds -> `on_hang(seconds_since_beat)`.

A hung host (a stuck collective, a dead peer that JAX waits on forever) never returns from
its step, so the check must run on another thread. `on_hang` runs on the watchdog thread;
the worker typically logs and calls `os._exit(...)` so Ray Train restarts the worker group
(raising on the watchdog thread would not interrupt the main thread). It fires once.
Start it after the first step has compiled, or use a timeout longer than compilation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Watchdog:
    def __init__(
        self,
        timeout_s: float,
        on_hang: Callable[[float], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._on_hang = on_hang
        self._clock = clock
        self._poll_s = poll_s if poll_s is not None else min(timeout_s / 4, 5.0)
        self._last_beat = clock()
        self.last_step: int | None = None
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="palm-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._last_beat = self._clock()
        self._thread.start()
        return self

    def beat(self, step: int | None = None) -> None:
        """Call after every step (and after long legitimate pauses, e.g. a restore)."""
        self._last_beat = self._clock()
        self.last_step = step

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            silent = self._clock() - self._last_beat
            if silent >= self.timeout_s:
                self.fired = True
                self._on_hang(silent)
                return
