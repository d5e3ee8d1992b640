"""Goodput of runs shorter than a second is a fraction, not zero."""

import pytest

from palm_platform.supervise.goodput import GoodputTracker, merge_summaries


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_half_second_run_has_its_real_goodput():
    clock = FakeClock(10.0)
    tracker = GoodputTracker(clock, wall_clock=FakeClock(1_700_000_000.0))
    with tracker.phase("step", step=0):
        clock.now += 0.25
    clock.now += 0.25
    summary = tracker.summary()
    assert summary["wall_s"] == pytest.approx(0.5)
    assert summary["goodput"] == pytest.approx(0.5)
    merged = merge_summaries([summary, summary])
    assert merged["goodput"] == pytest.approx(0.5) and merged["wall_s"] == pytest.approx(1.0)
    short = merge_summaries([summary])
    assert short["goodput"] == pytest.approx(0.5)
