"""Goodput edges: sub-second runs, an open phase, a zero-length run, the bounded step
history, and a save/load round trip that must not count idle time twice."""

import json

import pytest

from palm_platform.metrics.goodput import GoodputTracker, merge_summaries


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


def _tracker(**kwargs):
    clock = FakeClock(10.0)
    return GoodputTracker(clock, wall_clock=FakeClock(1_700_000_000.0), **kwargs), clock


def test_summary_inside_an_open_phase_charges_it_so_far():
    tracker, clock = _tracker()
    with tracker.phase("checkpoint"):
        clock.now += 4.0
        summary = tracker.summary()
    assert summary["badput_s"] == {"checkpoint": 4.0}


def test_a_run_of_zero_seconds_has_zero_goodput():
    tracker, _ = _tracker()
    assert tracker.summary()["goodput"] == 0.0


def test_only_the_newest_step_times_are_kept_for_recomputation():
    tracker, clock = _tracker(step_history=3)
    for step in range(5):
        with tracker.phase("step", step=step):
            clock.now += 1.0 + step  # step s takes 1 + s seconds
    state = tracker.state_dict()
    assert [s for s, _ in state["step_seconds"]] == [2, 3, 4]
    assert [v for _, v in state["step_seconds"]] == [3.0, 4.0, 5.0]


def test_idle_time_survives_a_save_and_load_once():
    tracker, clock = _tracker()
    with tracker.phase("step", step=0):
        clock.now += 2.0
    clock.now += 3.0  # outside any phase: "other"
    before = tracker.summary()
    loaded, _ = _tracker()
    state = tracker.state_dict()
    state.pop("saved_at_unix")  # no gap: compare the totals only
    loaded.load_state_dict(state)
    after = loaded.summary()
    assert after["badput_s"] == pytest.approx(before["badput_s"]) and after["wall_s"] == 5.0


def test_a_bad_saved_state_is_refused_without_echoing_it_whole():
    from palm_platform.metrics.goodput import GoodputTracker

    with pytest.raises(ValueError) as error:
        GoodputTracker().load_state_dict({"wall_s": "x" * 100_000, "productive_s": 1.0,
                                          "badput_s": {}})
    assert "not a GoodputTracker state" in str(error.value) and len(str(error.value)) < 400


def test_the_goodput_file_is_written_by_save_and_read_back_by_resume(tmp_path):
    path = tmp_path / "goodput.json"
    first = GoodputTracker.resume(path, launched_at=None, writes=True)
    first.add("step", 2.0, step=1)
    first.add("checkpoint", 0.5)
    first.record_restart(1, {"infrastructure_s": 3.0})
    first.save()
    second = GoodputTracker.resume(path, launched_at=None, writes=False)
    summary = second.summary()
    assert summary["productive_s"] == pytest.approx(2.0)
    assert summary["badput_s"]["checkpoint"] == pytest.approx(0.5)
    assert second.restarts == [{"step": 1, "infrastructure_s": 3.0}]
    second.add("step", 1.0, step=2)
    second.save()  # writes=False: only the process that owns the file writes it
    assert json.loads(path.read_text())["productive_s"] == pytest.approx(2.0)


def test_an_elastic_steps_missing_share_moves_to_degraded():
    tracker = GoodputTracker(FakeClock(0.0), wall_clock=FakeClock(1_700_000_000.0))
    tracker.add("step", 4.0, step=1)
    assert tracker.reclassify(1, 0.25, cause="degraded") == pytest.approx(1.0)
    summary = tracker.summary()
    assert summary["productive_s"] == pytest.approx(3.0)
    assert summary["badput_s"]["degraded"] == pytest.approx(1.0)
