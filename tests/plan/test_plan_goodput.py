"""`palm plan JOB --goodput`: the goodput table from the compiled step, its flags' ranges, and
the plan cache that spares the second call a compile."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.paths import TEST_JOBS

JOBS = TEST_JOBS
PALM = Path(sys.executable).parent / "palm"


def palm_plan(job: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PALM_PLAN_CACHE": str(cache)}
    return subprocess.run([PALM, "plan", str(job), *extra], capture_output=True, text=True,
                          timeout=900, env=env)


@pytest.mark.parametrize("flags, named", [
    (["--goodput", "--mtbf-hours", "-3"], "--mtbf-hours"),
    (["--goodput", "--mtbf-hours", "0"], "--mtbf-hours"),
    (["--goodput", "--preemptions-per-day", "1e9"], "--preemptions-per-day"),
    (["--goodput", "--simulate", "0"], "--simulate"),
    (["--simulate", "10"], "--simulate"),
    (["--goodput", "--compare=--xla_enable_async_all_gather=false"], "--compare"),
])
def test_a_flag_out_of_range_exits_2_with_one_line(tmp_path, flags, named):
    result = palm_plan(JOBS / "plan-tiny.yaml", tmp_path, *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert not list(tmp_path.iterdir())  # nothing compiled, nothing cached


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
@pytest.mark.usefixtures("libtpu")
def test_goodput_json_from_the_compiled_step_then_from_the_plan_cache(tmp_path):
    spec = yaml.safe_load((JOBS / "plan-tiny.yaml").read_text())
    # palm-tiny's v4 step is microseconds: a job long enough that start-up does not dominate,
    # saving far too rarely for a failure every 2 hours
    spec["train"]["steps"] = 10**11
    spec["checkpoint"]["every_steps"] = 10**7
    job = tmp_path / "plan-tiny.yaml"
    job.write_text(yaml.safe_dump(spec))
    cache = tmp_path / "plans"
    first = palm_plan(job, cache, "--goodput", "--json", "--mtbf-hours", "2", "--simulate", "60")
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads(first.stdout.strip().splitlines()[-1])
    assert "compiled now" in out["step_source"] and len(list(cache.glob("*.json"))) == 1
    assert out["mtbf_h"] == pytest.approx(2.0)
    assert out["step_s"] > 0 and out["restart_s"] > 0
    [tier] = out["tiers"]  # the job has no RAM tier: persistent only
    assert tier["name"] == "persistent" and tier["interval_steps"] == 10**7
    assert 1 <= tier["recommended_interval_steps"] < 10**7  # a failure every 2 h: save more often
    assert 0 < out["goodput_job"] < out["goodput_recommended"] <= 1
    assert out["lost"]["recomputation"] > out["lost_recommended"]["recomputation"]
    assert 0 < out["goodput_p10"] <= out["goodput_median"] <= 1
    # The same step again: read from the plan cache, no compile; a different failure rate
    # changes the table, not the step.
    second = palm_plan(job, cache, "--goodput", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert "plan cache" in again["step_source"] and again["step_s"] == out["step_s"]
    assert again["mtbf_h"] > 1000  # the per-chip default for 16 chips
    # A RAM tier (checkpoint.local) does not change the step: the cache still serves it, and
    # the tier gets its own, shorter interval; the persistent tier then sees only the
    # failures that lose every RAM copy, so its recommended interval grows.
    spec["checkpoint"]["local"] = {"directory": str(tmp_path / "shm"), "every_steps": 10**7}
    job.write_text(yaml.safe_dump(spec))
    tiered = palm_plan(job, cache, "--goodput", "--json", "--mtbf-hours", "2")
    assert tiered.returncode == 0, tiered.stderr[-3000:]
    two = json.loads(tiered.stdout.strip().splitlines()[-1])
    assert "plan cache" in two["step_source"]
    by_name = {t["name"]: t for t in two["tiers"]}
    assert set(by_name) == {"persistent", "local"}
    assert (by_name["local"]["recommended_interval_steps"]
            < by_name["persistent"]["recommended_interval_steps"])
    assert (by_name["persistent"]["recommended_interval_steps"]
            > tier["recommended_interval_steps"])
    text = palm_plan(job, cache, "--goodput")
    assert text.returncode == 0 and "expected goodput" in text.stdout
    assert "Young/Daly" in text.stdout and "Llama 3" in text.stdout
    assert text.stdout.count("lost per day") == 2  # at the job's and the recommended intervals
    # A job at the recommended intervals gets one line for both, not the same line twice.
    spec["checkpoint"]["every_steps"] = by_name["persistent"]["recommended_interval_steps"]
    spec["checkpoint"]["local"]["every_steps"] = by_name["local"]["recommended_interval_steps"]
    job.write_text(yaml.safe_dump(spec))
    same = palm_plan(job, cache, "--goodput", "--mtbf-hours", "2")
    assert same.returncode == 0, same.stderr[-3000:]
    assert "which are the recommended ones" in same.stdout
    assert same.stdout.count("lost per day") == 1, same.stdout
