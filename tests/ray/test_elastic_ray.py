"""Elastic pods on a real local Ray cluster: pod 1 is taken away mid-run (`palm cluster
remove-pod 1`: every host of it stopped), the run goes on on pod 0, pod 1 comes back
(`add-pod 1`) and the run grows back to two pods from a step every host saved when the pod
returned (ray/resize.py: no step computed again), trains on both, and stops cleanly on
Ctrl-C. Then two quick cycles: `remove-pod 1`, `add-pod 1` 2 s after the removal returned
(a pod must come back at any time: before issue 30's fix, the re-added host's raylet aborted
with "bind: Address already in use"), and the run grows back to two pods after each one; then
a planned removal (`remove-pod 1 --drain`: the run saves an agreed step before the hosts go)
and the pod's return, neither computing a step again.
Driven by the benchmark's own scenario (benchmarks/bench_elastic.py), with few steps.
The job's step count is out of reach: how many steps a regrowth takes depends on the
machine's speed, so the test stops the run itself a few steps after it grew back."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

# The first test pays for the module's scenario (a cluster, a run, four remove/add cycles).
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(1800)]

STEPS = 5000  # out of reach: the run is stopped after it grows back
AFTER_GROW = 3
QUICK_CYCLES = 2


@pytest.fixture(scope="module")
def shrink_grow(tmp_path_factory):
    out = tmp_path_factory.mktemp("elastic") / "figures.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_elastic.py"),
                          "--steps", str(STEPS), "--warm-steps", "10", "--degraded-steps", "10",
                          "--quick-cycles", str(QUICK_CYCLES), "--add-after-s", "2",
                          "--drain-cycle",
                          "--stop-after-grow", str(AFTER_GROW), "--json", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert out.exists(), run.stdout + run.stderr[-3000:]
    return run, json.loads(out.read_text())


def test_the_run_shrinks_to_one_pod_grows_back_and_stops_cleanly(shrink_grow):
    run, figures = shrink_grow
    log = Path(figures["log"]).read_text()
    assert run.returncode == 0 and figures["exit_code"] == 130, run.stdout + log[-3000:]
    events = [(e["from_pods"], e["to_pods"], e["cause"]) for e in figures["resize_events"]]
    assert events[:2] == [(2, 1, "pod lost"), (1, 2, "pod returned")]
    shrink, grow = figures["resize_events"][:2]
    assert 10 <= shrink["step"] < grow["step"] < grow["step"] + AFTER_GROW <= figures["last_step"]
    # the grow-back restored the step every host saved when the pod returned: nothing lost
    # (before: the newest periodic checkpoint, up to 4 steps of one-pod progress again)
    assert grow["recomputed_steps"] == 0, figures["resize_events"]
    assert f"interrupted at step {figures['last_step']}; re-run the same command" in log


def test_a_pod_added_2_s_after_its_removal_comes_back_and_the_run_grows_back_each_time(
        shrink_grow):
    _, figures = shrink_grow
    cycles = figures["quick_cycles"]
    assert len(cycles) == QUICK_CYCLES  # each add-pod exited 0 (the benchmark raises if not)
    regrown = [c["regrown_step"] for c in cycles]
    assert regrown == sorted(set(regrown)), cycles  # a new 2-pod step after every add
    assert all(c["add_started_after_remove_s"] < 5 for c in cycles), cycles
    # every resize is between one and two pods, and the run ends on two
    assert {(e["from_pods"], e["to_pods"]) for e in figures["resize_events"]} <= {(2, 1), (1, 2)}


def test_resizes_are_in_the_ledger_and_degraded_time_in_goodput(shrink_grow):
    _, figures = shrink_grow
    resizes = [e for e in figures["ledger"] if e["kind"] == "resize"]
    assert [(e["from_pods"], e["to_pods"]) for e in resizes][:2] == [(2, 1), (1, 2)]
    assert figures["goodput"]["badput_degraded_s"] > 0
    assert figures["tokens_per_s"]["degraded"] > 0 and figures["tokens_per_s"]["after_grow"] > 0


def test_a_planned_removal_and_the_return_compute_no_step_again(shrink_grow):
    _, figures = shrink_grow
    drain = figures["drain_cycle"]
    assert "saved an agreed step and left" in drain["remove_pod"], drain
    assert drain["shrunk_step"] < drain["regrown_step"]
    during = [e for e in figures["resize_events"] if e["time"] > drain["started"]]
    assert [(e["from_pods"], e["to_pods"]) for e in during] == [(2, 1), (1, 2)], during
    assert [e["recomputed_steps"] for e in during] == [0, 0], during
    assert [e["cause"] for e in during] == ["pod removed (planned)", "pod returned"], during
