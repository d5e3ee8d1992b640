"""Watchdog edges: the default poll interval, and a silence of exactly the timeout."""

import threading
import time

import pytest

from palm_platform.supervise.watchdog import Watchdog


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fires_with_the_default_poll_interval():
    fired = threading.Event()
    start = time.monotonic()
    watchdog = Watchdog(0.2, lambda silent: fired.set()).start()  # polls every timeout / 4
    try:
        assert fired.wait(5) and watchdog.fired
        assert time.monotonic() - start < 2.0  # 0.2 s plus a poll, not a 5 s poll
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


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_timeout_that_is_not_positive_is_refused(timeout):
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        Watchdog(timeout, lambda s: None)


def test_stop_before_start_is_harmless():
    seen = []
    watchdog = Watchdog(0.1, seen.append)
    watchdog.stop()
    assert seen == [] and not watchdog.fired
