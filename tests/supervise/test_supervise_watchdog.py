"""Watchdog: fires once when beats stop, stays quiet while they come."""

import threading
import time

from palm_platform.supervise.watchdog import Watchdog


def test_fires_when_no_beat_arrives_within_the_timeout():
    fired = threading.Event()
    seen = []
    watchdog = Watchdog(0.2, lambda s: (seen.append(s), fired.set()), poll_s=0.02).start()
    try:
        assert fired.wait(5)
        assert watchdog.fired and seen[0] >= 0.2 and len(seen) == 1
    finally:
        watchdog.stop()


def test_does_not_fire_while_beats_keep_coming():
    seen = []
    with Watchdog(0.3, seen.append, poll_s=0.02) as watchdog:
        for step in range(15):
            time.sleep(0.05)
            watchdog.beat(step)
        assert watchdog.last_step == 14
    assert seen == [] and not watchdog.fired


def test_stop_ends_the_thread_without_firing():
    seen = []
    watchdog = Watchdog(0.2, seen.append, poll_s=0.02).start()
    watchdog.stop()
    time.sleep(0.3)
    assert seen == []
