"""Preemption notices in one process, the `preempt` fault, and a restart's account by cause
(the multi-host agreement itself: tests/ray/test_preemption_ray.py)."""

import json
import os
import signal

from palm_platform.checkpoint.preemption import PreemptionNotice
from palm_platform.metrics.goodput import GoodputTracker
from palm_platform.supervise.config import FaultInjection
from palm_platform.supervise.faults import FaultInjector
from palm_platform.supervise.restart_account import (
    by_goodput_name,
    last_sign_of_life,
    preempted_since,
)


def test_the_preempt_fault_notices_its_host_once_and_training_goes_on(tmp_path):
    calls = []
    faults = [FaultInjection(kind="preempt", step=4, host=1)]
    hosts = [FaultInjector(faults, host_index=h, state_dir=tmp_path / "faults",
                           preempt=lambda h=h: calls.append(h)) for h in range(2)]
    for step in range(8):
        for host in hosts:
            host.maybe_fire(step)  # returns: a notice does not end the process
    assert calls == [1]
    again = FaultInjector(faults, host_index=1, state_dir=tmp_path / "faults",
                          preempt=lambda: calls.append("again"))
    again.maybe_fire(5)  # a restarted host does not get the notice again
    assert calls == [1]


def test_a_sigterm_to_a_one_process_run_is_noticed_not_fatal():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        notice = PreemptionNotice(use_jax=False)
        assert notice.mechanism == "signal" and not notice.reached(3)
        os.kill(os.getpid(), signal.SIGTERM)
        assert notice.reached(4)  # the process is still here, and the step is agreed
        notice.close()
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, previous)


def _records(run_dir, *records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_palm_run_relaunches_only_for_a_preemption_of_this_launch_that_stopped_it(tmp_path):
    assert preempted_since(tmp_path / "none", 0.0) is None  # no metrics yet
    _records(tmp_path, {"kind": "step", "step": 7, "time": 99.0},
             {"kind": "preempt", "step": 7, "time": 100.0})
    assert preempted_since(tmp_path, 90.0) == 7
    assert preempted_since(tmp_path, 110.0) is None  # an earlier launch's preemption
    # The group restarted in place (a fixed-size job) and trained on: nothing to relaunch.
    _records(tmp_path, {"kind": "step", "step": 7, "time": 99.0},
             {"kind": "preempt", "step": 7, "time": 100.0},
             {"kind": "step", "step": 8, "time": 120.0})
    assert preempted_since(tmp_path, 90.0) is None


def test_the_failure_time_is_the_newest_record_or_fault_marker_before_the_restart(tmp_path):
    _records(tmp_path, {"kind": "step", "step": 5, "time": 100.0},
             {"kind": "step", "step": 6, "time": 101.0},
             {"kind": "step", "step": 3, "time": 200.0})  # the restarted group's
    assert last_sign_of_life(tmp_path, 150.0) == (101.0, 6, 0.0)
    assert last_sign_of_life(tmp_path, 150.0, restored_step=5) == (101.0, 6, 1.0)  # step 6
    marker = tmp_path / "faults" / "00-kill_host-step6-host1.fired"
    marker.parent.mkdir()
    marker.write_text("{}")
    os.utime(marker, (101.5, 101.5))
    assert last_sign_of_life(tmp_path, 150.0) == (101.5, 6, 0.0)


def test_badput_under_ml_goodput_measurement_names():
    assert by_goodput_name({"startup": 3.0, "compile": 2.0, "data": 1.0, "checkpoint": 0.5,
                            "recomputation": 4.0, "restart": 6.0, "other": 0.1}) == {
        "checkpoint_save": 0.5, "data_loading": 1.0, "infrastructure_recovery": 6.0,
        "initialization": 3.0, "other": 0.1, "program_startup": 2.0, "wasted_progress": 4.0}


def test_each_restart_account_is_kept_in_the_goodput_file_across_attempts():
    first = GoodputTracker()
    first.record_restart(8, {"recovery_s": 9.5, "wasted_progress_s": 0.0})
    second = GoodputTracker()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    second.record_restart(20, {"recovery_s": 7.0, "wasted_progress_s": 1.2})
    assert second.restarts == [{"step": 8, "recovery_s": 9.5, "wasted_progress_s": 0.0},
                               {"step": 20, "recovery_s": 7.0, "wasted_progress_s": 1.2}]
    old = first.state_dict()
    del old["restarts"]  # a goodput file written before this field
    third = GoodputTracker()
    third.load_state_dict(old)
    assert third.restarts == []


def test_a_restart_gap_is_split_between_its_causes():
    tracker = GoodputTracker()
    tracker.add("restart", 30.0)
    assert tracker.move(4.0, from_cause="restart", to_cause="recomputation") == 4.0
    assert tracker.move(50.0, from_cause="restart", to_cause="startup") == 26.0  # at most all
    assert tracker.move(-1.0, from_cause="startup", to_cause="restart") == 0.0
    badput = tracker.summary()["badput_s"]
    assert badput["restart"] == 0 and badput["recomputation"] == 4 and badput["startup"] == 26
