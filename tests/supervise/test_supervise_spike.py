"""Spike detector: rules, warm-up, NaN/Inf, history hygiene, determinism, persistence."""

import json
import math

import pytest
import yaml

from palm_platform.job import JobError, load_job, parse_job
from palm_platform.supervise.config import SpikeConfig
from palm_platform.supervise.spike import Spike, SpikeDetector
from tests.support.paths import ROOT

JOBS = ROOT / "jobs"


def _feed(detector, losses, start=0):
    return [detector.observe(start + i, loss) for i, loss in enumerate(losses)]


def _noisy(n, base=3.0, wiggle=0.05):
    # deterministic small wiggle around a flat loss
    return [base + wiggle * math.sin(1.7 * i) for i in range(n)]


def test_ratio_rule_flags_loss_above_threshold_times_median():
    detector = SpikeDetector(SpikeConfig(rule="ratio", window=10, min_history=5, threshold=2.0))
    assert _feed(detector, [3.0] * 10) == [None] * 10
    assert detector.observe(10, 5.9) is None
    spike = detector.observe(11, 6.1)
    assert spike is not None and spike.rule == "ratio"
    assert spike.step == 11 and spike.median == 3.0 and spike.limit == 6.0


def test_zscore_rule_flags_loss_above_median_plus_k_robust_std():
    detector = SpikeDetector(SpikeConfig(rule="zscore", window=20, min_history=10, zscore=6.0))
    _feed(detector, _noisy(20))
    assert detector.observe(20, 3.2) is None
    spike = detector.observe(21, 4.0)
    assert spike is not None and spike.rule == "zscore"
    assert spike.median == pytest.approx(3.0, abs=0.05)
    assert spike.median < spike.limit < 4.0


def test_zscore_does_not_flag_ordinary_noise_or_a_falling_loss():
    detector = SpikeDetector(SpikeConfig(rule="zscore", window=20, min_history=10))
    falling = [7.0 - 0.05 * i + 0.1 * math.sin(2.3 * i) for i in range(60)]
    assert all(v is None for v in _feed(detector, falling))


def test_zscore_noise_estimate_ignores_a_steady_trend():
    # falling 0.05 per step with +-0.01 noise: a jump of 0.5 above the median is a spike
    detector = SpikeDetector(SpikeConfig(rule="zscore", window=20, min_history=10, zscore=6.0))
    _feed(detector, [7.0 - 0.05 * i + 0.01 * (-1) ** i for i in range(20)])
    spike = detector.observe(20, 7.05)  # median 6.525; a MAD about it would put the bar at 8.7
    assert spike is not None
    assert spike.scale == pytest.approx(0.06525)  # noise ~0.01, so the 1% floor of the median


def test_zscore_on_a_perfectly_flat_window_uses_a_relative_floor():
    detector = SpikeDetector(SpikeConfig(rule="zscore", window=10, min_history=5, zscore=6.0))
    _feed(detector, [2.0] * 10)
    assert detector.observe(10, 2.1) is None  # 5% up: under 6 x 1% of the median
    assert detector.observe(11, 2.2) is not None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_spikes_even_before_min_history(bad):
    detector = SpikeDetector(SpikeConfig(window=10, min_history=5))
    spike = detector.observe(0, bad)
    assert spike is not None and spike.rule == "nonfinite"
    assert "not finite" in spike.describe()


def test_no_verdict_before_min_history():
    detector = SpikeDetector(SpikeConfig(rule="ratio", window=10, min_history=5))
    assert _feed(detector, [1.0, 1.0, 1.0, 1.0, 100.0]) == [None] * 5
    assert detector.observe(5, 100.0) is not None  # history: 5 losses incl. the 100


def test_spike_losses_do_not_enter_the_history():
    detector = SpikeDetector(SpikeConfig(rule="ratio", window=5, min_history=5))
    _feed(detector, [1.0] * 5)
    before = detector.history
    assert detector.observe(5, 50.0) is not None
    assert detector.observe(6, float("nan")) is not None
    assert detector.history == before
    assert detector.observe(7, 50.0) is not None  # the bar did not move


def test_verdicts_are_a_pure_function_of_the_observations():
    cfg = SpikeConfig(window=20, min_history=10)
    losses = _noisy(50) + [9.0, 3.0, float("nan")] + _noisy(20)
    a, b = SpikeDetector(cfg), SpikeDetector(cfg)

    def as_json(verdicts):  # NaN != NaN; compare the JSON form
        return [v and v.to_dict() for v in verdicts]

    assert as_json(_feed(a, losses)) == as_json(_feed(b, losses))
    assert a.state_dict() == b.state_dict()
    assert [s.step for s in _feed(SpikeDetector(cfg), losses) if s] == [50, 52]


def test_steps_must_increase_until_truncated():
    detector = SpikeDetector(SpikeConfig(window=10, min_history=5))
    _feed(detector, [3.0] * 10)
    with pytest.raises(ValueError, match="truncate"):
        detector.observe(5, 3.0)
    detector.truncate(5)
    assert [s for s, _ in detector.history] == [0, 1, 2, 3, 4]
    assert detector.observe(5, 3.0) is None


def test_truncate_then_replay_equals_restore_of_saved_state():
    cfg = SpikeConfig(window=10, min_history=5, rollback_steps=10)
    losses = _noisy(40)
    saved_at_20 = None
    live = SpikeDetector(cfg)
    for step, loss in enumerate(losses):
        if step == 20:
            saved_at_20 = json.loads(json.dumps(live.state_dict()))
        live.observe(step, loss)
    live.truncate(20)
    restarted = SpikeDetector(cfg)
    restarted.load_state_dict(saved_at_20)
    assert live.history[-cfg.window :] == restarted.history[-cfg.window :]
    replay = losses[20:] + [9.0]
    assert _feed(live, replay, start=20) == _feed(restarted, replay, start=20)


def test_spike_json_round_trip_keeps_nan():
    spike = SpikeDetector(SpikeConfig()).observe(3, float("nan"))
    text = json.dumps(spike.to_dict(), allow_nan=False)
    back = Spike.from_dict(json.loads(text))
    assert back.step == 3 and math.isnan(back.loss) and back.rule == "nonfinite"


def test_min_history_above_window_is_a_job_error(tmp_path):
    # A complete job, so the spike section's error is the only problem reported.
    raw = yaml.safe_load((JOBS / "local-cpu.yaml").read_text())
    raw["faults"]["spike"] = {"window": 20, "min_history": 30}
    with pytest.raises(JobError, match="min_history=30 exceeds window=20"):
        parse_job(raw, tmp_path / "job.yaml")


def test_local_job_spike_section_is_valid():
    job = load_job("jobs/local-cpu.yaml")
    spike = job.faults.spike
    assert (spike.window, spike.rollback_steps, spike.skip_batches) == (20, 10, 5)
    assert spike.rule == "zscore" and spike.min_history <= spike.window
