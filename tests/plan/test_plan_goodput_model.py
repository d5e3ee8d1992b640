"""The goodput model of `palm plan --goodput`: Young/Daly intervals, the expected goodput's
accounting, and the simulation agreeing with the expectation (pure arithmetic, fast)."""

import dataclasses
import math

import pytest

from palm_platform.plan.goodput_model import (
    DAY_S,
    Inputs,
    Tier,
    expected,
    percentiles,
    recommended,
    simulate,
)
from tests.support.paths import TEST_JOBS


def inputs(**overrides) -> Inputs:
    persistent = Tier("persistent", save_s=2.0, write_s=30.0, restore_s=60.0, interval_steps=50)
    base = dict(step_s=10.0, restart_s=120.0, startup_s=600.0, job_steps=100_000,
                tiers=(persistent,), unexpected_per_s=1 / (8 * 3600), preempt_per_s=0.0,
                p_ram_lost=0.0, unavailable=0.0)
    return Inputs(**{**base, **overrides})


def test_recommended_interval_is_young_daly_over_the_failures_that_restore_from_the_tier():
    one = inputs()
    # sqrt(2 * 2 s * 28,800 s) = 339.4 s = 34 steps of 10 s
    assert recommended(one) == {"persistent": 34}
    local = Tier("local", save_s=0.5, write_s=0.5, restore_s=5.0, interval_steps=10)
    two = inputs(tiers=(one.tiers[0], local), p_ram_lost=0.1)
    rec = recommended(two)
    # the RAM tier sees 90% of the failures, the persistent tier the 10% that lose RAM
    assert rec["local"] == round(math.sqrt(2 * 0.5 * 8 * 3600 / 0.9) / 10)
    assert rec["persistent"] == round(math.sqrt(2 * 2.0 * 8 * 3600 / 0.1) / 10)
    # a tier cannot save faster than its background write: 30 s of writes = 3 steps at least
    slow = inputs(unexpected_per_s=1 / 60.0)
    assert recommended(slow)["persistent"] == 3


def test_no_failures_and_no_saves_leaves_only_start_up_and_unavailability():
    quiet = inputs(unexpected_per_s=0.0, tiers=(Tier("persistent", 0.0, 0.0, 60.0, 50),),
                   unavailable=0.001)
    e = expected(quiet, {"persistent": 50})
    job_days = 100_000 * 10.0 / DAY_S
    assert e.lost_s_per_day["start-up"] == pytest.approx(600.0 / job_days)
    assert e.lost_s_per_day["infrastructure"] == pytest.approx(86.4)
    assert e.goodput == pytest.approx(1 - (600.0 / job_days + 86.4) / DAY_S)
    assert e.lost_s_per_day["recomputation"] == e.lost_s_per_day["restarts"] == 0


def test_lost_seconds_and_productive_time_add_up_to_the_day():
    e = expected(inputs(preempt_per_s=4 / DAY_S), {"persistent": 50})
    assert e.goodput * DAY_S + sum(e.lost_s_per_day.values()) == pytest.approx(DAY_S)
    # 3 unexpected failures a day, each: restart 120 s, restore 60 s, half of 50 steps again
    per_step = 10.0 * (1 + 2.0 / 500.0)
    assert e.lost_s_per_day["recomputation"] == pytest.approx(3 * 25 * per_step)
    assert e.lost_s_per_day["restarts"] == pytest.approx((3 + 4) * 120.0)


def test_warm_hosts_shorten_the_restarts_of_failures_on_live_hosts_only():
    """A failure on a live host restarts warm (20 s); a lost host and every notice restart the
    worker group (120 s); the simulation draws the same split."""
    warm = inputs(preempt_per_s=4 / DAY_S, warm_restart_s=20.0, p_live_host=0.25)
    e = expected(warm, {"persistent": 50})
    assert e.lost_s_per_day["restarts"] == pytest.approx(3 * (0.25 * 20 + 0.75 * 120) + 4 * 120)
    cold = expected(inputs(preempt_per_s=4 / DAY_S), {"persistent": 50})
    assert e.goodput > cold.goodput
    busy = dict(unexpected_per_s=1 / 600.0, preempt_per_s=0.0)
    fast = simulate(inputs(**busy, warm_restart_s=1.0, p_live_host=1.0), {"persistent": 50}, 20)
    slow = simulate(inputs(**busy), {"persistent": 50}, 20)
    assert sum(fast) > sum(slow)


def test_the_recommended_intervals_beat_any_other_on_the_model():
    two = inputs(tiers=(Tier("persistent", 2.0, 30.0, 60.0, 50),
                        Tier("local", 0.5, 0.5, 5.0, 10)), p_ram_lost=0.05)
    rec = recommended(two)
    best = expected(two, rec).goodput
    for local in (1, 2, 5, 10, 20, 50, 100):
        for persistent in (10, 50, 200, 1000):
            assert expected(two, {"local": local, "persistent": persistent}).goodput <= best + 2e-4


def test_simulated_days_centre_on_the_expectation_and_show_the_spread():
    busy = inputs(unexpected_per_s=1 / 3600.0, preempt_per_s=2 / DAY_S)
    intervals = recommended(busy)
    days = simulate(busy, intervals, 400, seed=1)
    p10, med = percentiles(days)
    assert med == pytest.approx(expected(busy, intervals).goodput, abs=0.01)
    assert p10 < med  # the average hides bad days
    assert simulate(busy, intervals, 50, seed=1) == days[:50]  # seeded: reproducible


def test_a_job_without_failures_simulates_to_its_expectation():
    calm = dataclasses.replace(inputs(), unexpected_per_s=0.0)
    days = simulate(calm, {"persistent": 50}, 5)
    assert all(d == pytest.approx(expected(calm, {"persistent": 50}).goodput, abs=1e-3)
               for d in days)


def _run_records(steps: int, step_s: float, startup_s: float, restarts: list[float],
                 resumed: list[tuple] = ()) -> list:
    """A finished run's metrics.jsonl as the loop writes it (the figures that matter).
    `resumed`: ("restart", to_step, recomputed_steps) or ("rollback", spike step, to_step)."""
    t0 = 1000.0
    records = [{"kind": "startup", "step": 0, "time": t0 + 1},
               {"kind": "start", "step": 0, "time": t0 + 2, "attempt": 0},
               {"kind": "step", "step": 1, "time": t0 + startup_s + step_s, "step_s": 9.0},
               {"kind": "compiled", "step": 1, "time": t0 + startup_s + step_s, "seconds": 9.0}]
    records += [{"kind": "checkpoint_saved", "step": s, "time": t0 + 50, "blocked_s": 0.5}
                for s in range(5, steps + 1, 5)]
    attempt = 0
    for kind, a, b in resumed:
        if kind == "restart":
            attempt += 1
            records.append({"kind": "checkpoint_restored", "step": a, "time": t0 + 60,
                            "attempt": attempt, "tier": "persistent"})
            records.append({"kind": "restart", "step": a, "time": t0 + 61, "attempt": attempt,
                            "recovery_s": restarts[attempt - 1], "recomputed_steps": b})
        else:
            records.append({"kind": "rollback", "step": a, "time": t0 + 70, "to_step": b})
    wall, productive = 200.0, steps * step_s
    records.append({"kind": "goodput", "step": steps, "time": t0 + wall, "wall_s": wall,
                    "productive_s": productive, "goodput": productive / wall,
                    "badput_eval_s": 3.0, "badput_other_s": 1.0, "badput_recomputation_s": 5.0})
    return records


def _job(tmp_path, faults: list[dict], **checkpoint):
    import yaml

    from palm_platform.job import load_job

    spec = yaml.safe_load((TEST_JOBS / "loop-2pod.yaml").read_text())
    spec["train"]["steps"] = 60
    spec["faults"]["inject"] = faults
    spec["checkpoint"].update(checkpoint)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    return load_job(tmp_path / "job.yaml")


FAULTS = [
    {"kind": "damage_checkpoint", "step": 11},  # truncates the step-10 save
    {"kind": "kill_host", "step": 13, "host": 1},  # the run restarted from step 5: 8 again
    {"kind": "poison_batches", "step": 27},  # it rolled back to 15: 12 steps again
    {"kind": "hang_host", "step": 40, "host": 1},  # from 35 after the hang timeout
]
RESUMED = [("restart", 5, 8), ("rollback", 27, 15), ("restart", 35, 5)]


def test_a_finished_runs_prediction_pays_start_up_saves_and_each_fault_with_its_lost_steps(
        tmp_path):
    from palm_platform.plan import goodput_check

    job = _job(tmp_path, FAULTS)
    figures = goodput_check.run_figures(_run_records(60, 1.0, 20.0, [10.0, 14.0], RESUMED))
    assert (figures.steps, figures.step_s, figures.startup_s) == (60, 1.0, 20.0)
    assert figures.save_s == {"persistent": 0.5} and figures.unmodelled_s == 4.0
    assert figures.restart_s == [10.0, 14.0]
    prediction = goodput_check.predict(job, figures, restart_s=12.0, restore_s=2.0)
    assert prediction.resumes == [("kill_host", 13, 5), ("poison_batches", 27, 15),
                                  ("hang_host", 40, 35)]
    assert prediction.recomputed_steps == 8 + 12 + 5
    lost = 20 + 12 * 0.5 + 2 * 12 + job.faults.hang_timeout_s + 2 + 25 * 1.0 + 4.0
    assert prediction.goodput == pytest.approx(60 / (60 + lost))


def test_where_each_failure_resumed_is_read_from_the_runs_records_not_derived(tmp_path):
    # The same faults with a RAM tier every 2 steps: the run resumed from its RAM saves, and
    # the prediction says so because the records do (no copy of the recovery rules).
    from palm_platform.plan import goodput_check

    persistent_only = goodput_check.predict(
        _job(tmp_path, FAULTS), goodput_check.run_figures(
            _run_records(60, 1.0, 20.0, [10.0, 14.0], RESUMED)), restart_s=12.0)
    ram_records = _run_records(60, 1.0, 20.0, [10.0, 14.0],
                               [("restart", 12, 1), ("rollback", 27, 15), ("restart", 38, 2)])
    ram = goodput_check.predict(_job(tmp_path, FAULTS, local={"every_steps": 2}),
                                goodput_check.run_figures(ram_records), restart_s=12.0)
    assert [resume for _, _, resume in ram.resumes] == [12, 15, 38]
    assert ram.recomputed_steps == 1 + 12 + 2
    assert ram.goodput > persistent_only.goodput


def test_the_resume_points_are_the_attempts_restores_and_the_rollbacks_targets():
    from palm_platform.plan.goodput_check import Resume, resumes

    records = [
        {"kind": "checkpoint_restored", "step": 20, "attempt": 0},  # a new launch: no restart
        {"kind": "checkpoint_restored", "step": 25, "attempt": 1},
        {"kind": "restart", "step": 25, "attempt": 1, "recomputed_steps": 3},
        {"kind": "rollback", "step": 31, "to_step": 20},
        {"kind": "start", "step": 0, "attempt": 2},  # a restart before any checkpoint
        {"kind": "checkpoint_restored", "step": 30, "attempt": 3},  # died before its 1st step
    ]
    assert resumes(records) == (Resume("restart", 25, 3), Resume("rollback", 20, 11),
                                Resume("restart", 0, None), Resume("restart", 30, None))


def test_a_failure_without_an_injected_fault_counts_the_steps_the_run_recorded_lost(tmp_path):
    from palm_platform.plan import goodput_check

    job = _job(tmp_path, [{"kind": "kill_host", "step": 13, "host": 1}])
    # the kill, then a host the platform did not kill (4 steps lost), then a spike of its own
    figures = goodput_check.run_figures(_run_records(
        60, 1.0, 20.0, [10.0, 14.0], [("restart", 10, 3), ("restart", 40, 4),
                                      ("rollback", 50, 45)]))
    prediction = goodput_check.predict(job, figures, restart_s=12.0, restore_s=2.0)
    assert prediction.resumes == [("kill_host", 13, 10)]
    assert prediction.recomputed_steps == 3 + 4 + 5
    assert prediction.lost_s["restarts"] == 2 * 12.0 and prediction.lost_s["rollbacks"] == 2.0
