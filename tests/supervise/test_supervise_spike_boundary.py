"""The spike rules at their boundary: a loss exactly at the limit is kept, the next float up
is a spike; the limit is checked against an independent numpy computation."""

import math

import numpy as np
import pytest

from palm_platform.supervise.config import SpikeConfig
from palm_platform.supervise.spike import SpikeDetector


def _fed(cfg: SpikeConfig, losses) -> SpikeDetector:
    detector = SpikeDetector(cfg)
    for step, loss in enumerate(losses):
        assert detector.observe(step, loss) is None
    return detector


def _just_above(x: float) -> float:
    return math.nextafter(x, math.inf)


@pytest.mark.parametrize(
    ("window", "median"),
    [([3.0] * 10, 3.0), ([1.0, 4.0, 2.0, 3.0, 6.0, 5.0], 3.5), ([1.0, 5.0, 2.0, 3.0, 4.0], 3.0)],
)
def test_ratio_rule_boundary_is_threshold_times_median(window, median):
    cfg = SpikeConfig(rule="ratio", window=len(window), min_history=len(window), threshold=2.0)
    limit = 2.0 * median
    at_limit = _fed(cfg, window)
    assert at_limit.observe(len(window), limit) is None
    above = _fed(cfg, window)
    spike = above.observe(len(window), _just_above(limit))
    assert spike is not None and spike.limit == limit and spike.median == median
    assert spike.scale == spike.factor == 2.0


def test_zscore_boundary_on_a_flat_window_is_the_relative_floor():
    cfg = SpikeConfig(rule="zscore", window=10, min_history=5, zscore=6.0)
    floor = 0.01 * 2.0
    limit = 2.0 + 6.0 * floor
    assert _fed(cfg, [2.0] * 10).observe(10, limit) is None
    spike = _fed(cfg, [2.0] * 10).observe(10, _just_above(limit))
    assert (
        spike is not None and spike.limit == limit and spike.scale == floor and spike.factor == 6.0
    )


def test_zscore_boundary_with_noise_matches_numpy():
    cfg = SpikeConfig(rule="zscore", window=12, min_history=12, zscore=4.0)
    losses = [3.0 + 0.3 * math.sin(1.3 * i) + 0.01 * i for i in range(12)]
    diffs = np.diff(losses)
    robust_std = 1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2)
    median = float(np.median(losses))
    assert robust_std > 0.01 * median  # the noise, not the floor, sets the bar here
    limit = median + 4.0 * robust_std
    assert _fed(cfg, losses).observe(12, limit * (1 - 1e-12)) is None
    spike = _fed(cfg, losses).observe(12, limit * (1 + 1e-12))
    assert spike is not None and spike.rule == "zscore"
    assert spike.limit == pytest.approx(limit, rel=1e-12)
    assert spike.scale == pytest.approx(robust_std, rel=1e-12)
    assert spike.median == pytest.approx(median, rel=1e-15)


def test_only_the_last_window_losses_set_the_bar():
    cfg = SpikeConfig(rule="ratio", window=5, min_history=5, threshold=2.0)
    detector = _fed(cfg, [10.0] * 5 + [1.0] * 5)
    spike = detector.observe(10, 2.5)  # 2.5 > 2 x 1.0; the older 10.0s no longer count
    assert spike is not None and spike.median == 1.0


def test_verdicts_start_exactly_at_min_history():
    cfg = SpikeConfig(rule="ratio", window=10, min_history=4, threshold=2.0)
    assert _fed(cfg, [1.0] * 3).observe(3, 50.0) is None  # 3 losses: too few to judge
    assert _fed(cfg, [1.0] * 4).observe(4, 50.0) is not None


def test_a_rolled_back_detector_forgets_replayed_steps_only():
    cfg = SpikeConfig(rule="ratio", window=5, min_history=5, threshold=2.0, rollback_steps=3)
    detector = _fed(cfg, [1.0] * 5 + [1.9] * 5)
    detector.truncate(7)
    assert [s for s, _ in detector.history] == [0, 1, 2, 3, 4, 5, 6]
    # window is now [1.0, 1.0, 1.0, 1.9, 1.9]: median 1.0, so 2.5 is a spike
    assert detector.observe(7, 2.5) is not None
    detector.truncate(0)
    assert detector.history == []
    assert detector.observe(0, 100.0) is None  # nothing to judge against after truncate(0)


def test_a_loaded_state_keeps_its_last_step():
    cfg = SpikeConfig(rule="ratio", window=5, min_history=5)
    detector = _fed(cfg, [1.0] * 8)
    restored = SpikeDetector(cfg)
    restored.load_state_dict(detector.state_dict())
    with pytest.raises(ValueError, match="steps must increase"):
        restored.observe(7, 1.0)
    empty = SpikeDetector(cfg)
    empty.load_state_dict(SpikeDetector(cfg).state_dict())  # last_step None
    assert empty.observe(0, 1.0) is None
