"""Goodput accounting with a fake clock: phases, nesting, recomputation, restarts, merge."""

import json

import pytest

from palm_platform.metrics.goodput import GoodputTracker, merge_summaries


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def _tracker(clock=None, wall=None):
    clock = clock or FakeClock()
    wall = wall or FakeClock(1_700_000_000.0)
    return GoodputTracker(clock, wall_clock=wall), clock, wall


def test_step_time_is_productive_and_other_phases_are_badput_by_cause():
    tracker, clock, _ = _tracker()
    with tracker.phase("startup"):
        clock.advance(10)
    with tracker.phase("compile"):
        clock.advance(20)
    for step in range(7):
        with tracker.phase("step", step=step):
            clock.advance(10)
    with tracker.phase("checkpoint"):
        clock.advance(5)
    clock.advance(5)  # outside any phase
    summary = tracker.summary()
    assert summary["wall_s"] == 110 and summary["productive_s"] == 70
    assert summary["goodput"] == pytest.approx(70 / 110)
    assert summary["badput_s"] == {"checkpoint": 5, "compile": 20, "startup": 10, "other": 5}


def test_nested_phase_time_goes_to_the_innermost_only():
    tracker, clock, _ = _tracker()
    with tracker.phase("step", step=0):
        clock.advance(3)
        with tracker.phase("checkpoint"):
            clock.advance(4)
        clock.advance(3)
    summary = tracker.summary()
    assert summary["productive_s"] == 6 and summary["badput_s"] == {"checkpoint": 4}


def test_rollback_moves_replayed_step_time_to_recomputation():
    tracker, clock, _ = _tracker()
    for step in range(10):
        with tracker.phase("step", step=step):
            clock.advance(1 + step)  # step s takes 1 + s seconds
    moved = tracker.rollback(to_step=6, from_step=9)
    assert moved == 7 + 8 + 9 + 10
    summary = tracker.summary()
    assert summary["productive_s"] == sum(range(1, 7))
    assert summary["badput_s"] == {"recomputation": 34}
    assert summary["wall_s"] == sum(range(1, 11))


def test_replayed_steps_count_once_as_productive():
    tracker, clock, _ = _tracker()

    def run(steps):
        for step in steps:
            with tracker.phase("step", step=step):
                clock.advance(1)

    run([0, 1, 2])
    tracker.rollback(to_step=1)  # spike at 2, restored checkpoint 1
    run([1, 2, 3])
    summary = tracker.summary()
    assert summary["productive_s"] == 4 and summary["badput_s"] == {"recomputation": 2}


def test_state_survives_a_restart_and_the_gap_counts_as_restart():
    tracker, clock, wall = _tracker()
    for step in range(5):
        with tracker.phase("step", step=step):
            clock.advance(2)
    state = json.loads(json.dumps(tracker.state_dict()))
    wall.advance(30)  # the crash, Ray restarting the group
    restarted = GoodputTracker(FakeClock(5.0), wall_clock=wall)
    restarted.load_state_dict(state)
    restarted.rollback(to_step=3)  # restored checkpoint 3: steps 3, 4 run again
    summary = restarted.summary()
    assert summary["wall_s"] == 40
    assert summary["productive_s"] == 6
    assert summary["badput_s"] == {"recomputation": 4, "restart": 30}


def test_step_phase_needs_its_step():
    tracker, _, _ = _tracker()
    with pytest.raises(ValueError, match="step="):
        with tracker.phase("step"):
            pass


def test_merge_summaries_adds_attempts():
    a = {"wall_s": 100, "productive_s": 80, "goodput": 0.8, "badput_s": {"compile": 20}}
    b = {"wall_s": 100, "productive_s": 40, "goodput": 0.4,
         "badput_s": {"compile": 10, "restart": 50}}
    merged = merge_summaries([a, b])
    assert merged == {"wall_s": 200, "productive_s": 120, "goodput": 0.6,
                      "badput_s": {"compile": 30, "restart": 50}}
