"""Watchdog edges: the default poll interval, and a silence of exactly the timeout."""

import threading

from palm_platform.supervise.watchdog import Watchdog


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fires_with_the_default_poll_interval():
    fired = threading.Event()
    watchdog = Watchdog(0.2, lambda silent: fired.set()).start()  # polls every timeout / 4
    try:
        assert fired.wait(5) and watchdog.fired
    finally:
        watchdog.stop()


def test_a_silence_of_exactly_the_timeout_fires():
    clock, fired = FakeClock(), threading.Event()
    seen = []
    watchdog = Watchdog(10.0, lambda s: (seen.append(s), fired.set()), clock=clock,
                        poll_s=0.01).start()
    try:
        clock.now = 9.5
        assert not fired.wait(0.2)  # under the timeout: quiet
        clock.now = 10.0
        assert fired.wait(5) and seen == [10.0]
    finally:
        watchdog.stop()
