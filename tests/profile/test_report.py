"""The report's arithmetic: the straggler, measured/predicted per category, both MFUs, the table.

Built from breakdowns as trace.py returns them (seconds per step per category), two hosts.
"""

import pytest

from palm_platform.profile.report import compare, format_report, seconds_text
from palm_platform.profile.trace import CATEGORIES


def host(index: int, compute: float, all_reduce: float, other: float) -> dict:
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    seconds.update({"compute": compute, "all-reduce": all_reduce, "other host": other})
    step = compute + all_reduce + other
    return {"host": index, "first_step": 11, "last_step": 15, "measured_step_s": step,
            "trace_step_s": step, "seconds": seconds, "overlapped": {"all-reduce": 0.1}}


@pytest.fixture
def report() -> dict:
    hosts = [host(0, 1.0, 0.2, 0.3), host(1, 1.2, 0.2, 0.6)]  # 1.5 s and 2.0 s per step
    return {"run": "runs/local-cpu", "folder": "runs/local-cpu/profile/step-11",
            "first_step": 11, "last_step": 15, "hosts": hosts,
            "straggler": {"host": 1, "step_s": 2.0, "median_step_s": 1.75,
                          "above_median": 2.0 / 1.75 - 1}}


PLAN = {"platform": "cpu", "devices": 16, "batch": 32, "step_s": 0.5, "mfu": 0.4,
        "seconds": {"compute": 0.4, "all-reduce": 0.05, "cross-pod": 0.05},
        "formula_flops_per_step": 1.75 * 16 * 1e9 * 0.1, "hardware": {"peak_flops": 1e9}}


def test_each_category_is_measured_over_predicted(report):
    rows = compare(report, PLAN)["rows"]
    assert rows["compute"] == {"predicted_s": 0.4, "measured_s": 1.1, "ratio": pytest.approx(2.75)}
    assert rows["all-reduce"]["ratio"] == pytest.approx(4.0)
    assert rows["cross-pod"] == {"predicted_s": 0.05, "measured_s": None, "ratio": None}
    assert rows["host side"]["measured_s"] == pytest.approx(0.45)
    assert rows["host side"]["ratio"] is None  # the plan predicts no host time
    assert rows["step"]["measured_s"] == 1.75 and rows["step"]["ratio"] == pytest.approx(3.5)


def test_both_mfus_use_the_plans_peak(report):
    comparison = compare(report, PLAN)
    assert comparison["predicted_mfu"] == 0.4
    assert comparison["measured_mfu"] == pytest.approx(0.1)  # formula / (1.75 s x 16 x peak)


def test_the_table_has_a_column_per_host_and_one_straggler_line(report):
    report["plan"], report["comparison"] = PLAN, compare(report, PLAN)
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0] == "local-cpu: steps 11-15 traced on 2 host(s), seconds per step"
    assert "host 0" in lines[2] and "host 1" in lines[2]
    assert [line for line in lines if "straggler" in line] == [
        "  straggler: host 1, 2.00 s per step, 14.3% above the median host (1.75 s)"]
    assert not any("reduce-scatter" in line for line in lines)  # zero everywhere: no row
    assert len(lines) == len(set(lines))


@pytest.mark.parametrize("seconds, text", [(2.283, "2.28 s"), (0.3124, "312 ms"),
                                           (0.0041, "4.1 ms"), (0.000035, "35 us")])
def test_seconds_are_printed_with_two_or_three_figures(seconds, text):
    assert seconds_text(seconds) == text
