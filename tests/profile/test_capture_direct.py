"""A capture in a one-process run (`palm run --direct`): the job file's fixed steps and a live
`palm profile` request through the run folder, both traced, reported, and marked.

The run is the real command in a child process (a pytest process that loaded libtpu for the
plan's tests cannot trace: compat/jax.py); `palm profile` runs on a thread of the test, as a
user's second terminal would (the run's host 0 reads the request file every `poll_every`
steps).
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from palm_platform.cli import main as palm
from palm_platform.commands import profile as profile_cli
from palm_platform.metrics.sink import read_records
from palm_platform.profile.request import listening_path
from tests.support.paths import TEST_JOBS

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    """One host of 4 CPU devices, 12 steps; the job file traces 9-10; `palm profile --steps 2
    --at-step 6` asks live."""
    folder = tmp_path_factory.mktemp("profiled")
    spec = yaml.safe_load((TEST_JOBS / "loop-2pod.yaml").read_text())
    spec.update(name="profiled", run_dir=str(folder / "run"),
                topology={"pods": 1, "hosts_per_pod": 1, "chips_per_host": 4,
                          "ici_topology": "2x2x1", "local": True},
                profile={"at_steps": [9], "steps": 2, "poll_every": 2})
    spec["train"]["steps"] = 12
    spec["metrics"]["check_pods_identical"] = False
    spec["checkpoint"]["directory"] = str(folder / "ckpt")
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    run = folder / "run" / "profiled"
    outcome = {}

    def ask() -> None:  # once the loop listens: the CLI's whole path, in this process
        while not listening_path(run).exists():
            threading.Event().wait(0.05)
        outcome["code"] = palm(["profile", str(run), "--steps", "2", "--at-step", "6"])

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    done = subprocess.run([Path(sys.executable).parent / "palm", "run", "--direct",
                           str(folder / "job.yaml")], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    asking.join(timeout=60)
    return run, outcome


def test_the_live_request_and_the_fixed_steps_are_both_traced(profiled_run):
    run, outcome = profiled_run
    assert outcome == {"code": 0}
    for first, last in ((6, 7), (9, 10)):
        host = run / "profile" / f"step-{first}" / "host-0"
        assert list(host.glob("plugins/profile/*/*.xplane.pb"))  # TensorBoard's file
        marks = json.loads((host / "steps.json").read_text())["marks"]
        assert [m["step"] for m in marks] == list(range(first - 1, last + 1))
    assert not listening_path(run).exists()  # the loop ended: nothing listens


def test_traced_steps_are_marked_and_charged_to_profiling(profiled_run):
    run, _ = profiled_run
    records = read_records(run)
    events = [(r["step"], r["last_step"]) for r in records if r["kind"] == "profile"]
    assert events == [(6, 7), (9, 10)]
    goodput = next(r for r in records if r["kind"] == "goodput")
    assert goodput["badput_profiling_s"] > 0


def test_the_report_adds_up_to_the_loops_step_time(profiled_run, capsys):
    run, _ = profiled_run
    assert palm(["profile", str(run), "--report", "--capture", "9", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    host = report["hosts"][0]
    assert (report["first_step"], report["last_step"]) == (9, 10)
    assert sum(host["seconds"].values()) == pytest.approx(host["trace_step_s"], rel=1e-6)
    assert host["trace_step_s"] == pytest.approx(host["measured_step_s"], rel=0.05)
    assert host["seconds"]["compute"] > 0


def test_requests_the_run_cannot_serve_get_one_line_and_exit_2(profiled_run, capsys):
    run, _ = profiled_run
    assert palm(["profile", str(run)]) == 2  # the run has ended
    assert capsys.readouterr().err.strip().endswith("not running (no train loop is listening; "
                                                    "a job file's profile: section traces "
                                                    "fixed steps)")
    assert palm(["profile", str(run), "--report", "--capture", "7"]) == 2
    assert "no capture starts at step 7" in capsys.readouterr().err
    assert profile_cli.parse_hosts("0,5") == [0, 5]
    assert palm(["profile", "gs://bucket/runs/x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_plan_for_the_runs_cpu_devices_is_set_beside_the_measurement(profiled_run, capsys):
    run, _ = profiled_run
    assert palm(["profile", str(run), "--report", "--plan", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    plan, rows = report["plan"], report["comparison"]["rows"]
    assert (plan["platform"], plan["devices"], plan["batch"]) == ("cpu", 4, 8)
    assert plan["seconds"]["compute"] > 0 and plan["seconds"]["all-reduce"] > 0
    assert rows["step"]["measured_s"] == pytest.approx(report["hosts"][0]["trace_step_s"])
    assert rows["step"]["ratio"] == pytest.approx(
        rows["step"]["measured_s"] / plan["step_s"])
    assert 0 < report["comparison"]["measured_mfu"] < 1
    assert 0 < report["comparison"]["predicted_mfu"] < 1
