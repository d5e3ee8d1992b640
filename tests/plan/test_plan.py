"""`palm plan`: the train step compiled by the real TPU compiler for TPU v4 slices, on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.paths import TEST_JOBS

# Skips without the tpu extra locally, fails in CI (tests/conftest.py: require_libtpu).
# `palm plan` compiles in a process of its own
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.usefixtures("libtpu")]
JOBS = TEST_JOBS
PALM = Path(sys.executable).parent / "palm"


def plan(job: Path, *extra: str):
    return subprocess.run(
        [PALM, "plan", str(job), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )


def test_tiny_job_fits_two_v4_slices_and_reports_memory_and_flops(tmp_path):
    spec = yaml.safe_load((JOBS / "plan-tiny.yaml").read_text())
    spec["train"]["compile_cache"] = str(tmp_path / "cache")
    job = tmp_path / "plan-tiny.yaml"
    job.write_text(yaml.safe_dump(spec))
    result = plan(job, "--warm-cache")
    assert result.returncode == 0, result.stderr[-3000:]
    # The TPU v4 executables of the train step went to the job's compilation cache.
    assert list((tmp_path / "cache").glob("jit_train_step-*")), result.stderr[-2000:]
    assert "executables written" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["fits"] and report["devices"] == 16
    assert report["mesh"] == {"pod": 2, "data": 4, "model": 2}
    assert 0 < report["per_chip_bytes"] < report["hbm_bytes"] == 32 * 2**30
    # Compiled FLOPs, every loop counted (2 microbatches x 2 layers, forward and backward),
    # are the program's matmuls: the formula's plus what full remat recomputes.
    assert [trips for _, trips in report["loops"]] == [2, 2, 2]
    assert report["compiled_flops_per_step"] == pytest.approx(
        report["program_flops_per_step"], rel=0.02
    )
    assert 1.05 < report["compiled_flops_per_step"] / report["formula_flops_per_step"] < 1.4
    assert report["cost_analysis_flops_per_step"] < 0.5 * report["compiled_flops_per_step"]
    assert not report["warnings"]
    assert report["global_batch"] == 32 and report["microbatches"] == 2
    params = 606_592  # palm-tiny
    assert report["cross_pod_bytes_per_step"] == params * 2  # bfloat16, two pods
    # The cross-pod gradient exchange is a data-center-network all-reduce: each of a pod's 8
    # chips sends its shard of the bfloat16 gradients (replicated LayerNorm scales: all of them).
    sent = report["collectives"]["dcn/all-reduce"]["bytes"]
    assert 1.0 <= sent / (report["cross_pod_bytes_per_step"] / 8) < 1.1
    assert any(key.startswith("ici/") for key in report["collectives"])
    t, mfu = report["step_time"], report["mfu_range"]
    assert (
        0
        < t["compute_at_peak_s"]
        <= t["compute_s"]
        <= t["best_s"]
        <= t["scheduled_s"]
        <= t["worst_s"]
    )
    assert 0 < mfu["worst"] <= mfu["scheduled"] <= mfu["best"] <= 1.0
    assert report["predicted_mfu"] == mfu["best"]


def test_job_that_cannot_fit_exits_1_naming_what_to_change(tmp_path):
    spec = yaml.safe_load((JOBS / "plan-tiny.yaml").read_text())
    spec["model"] = {
        "preset": "palm-540b",
        "overrides": {"num_layers": 1, "embed_lookup": "one_hot"},
    }
    spec["topology"] = {"pods": 1, "hosts_per_pod": 1, "chips_per_host": 4, "ici_topology": "2x2x1"}
    spec["train"].update(
        seq_len=2048, batch_schedule=[{"sequences": 16}], microbatch_sequences=None
    )
    job = tmp_path / "too-big.yaml"
    job.write_text(yaml.safe_dump(spec))
    result = plan(job)
    assert result.returncode == 1, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["fits"] and report["per_chip_bytes"] > report["hbm_bytes"]
    assert "more than a chip's HBM" in result.stderr and "Fix:" in result.stderr


def test_elastic_job_also_plans_its_degraded_shape_with_more_microbatches(tmp_path):
    spec = yaml.safe_load((JOBS / "plan-tiny.yaml").read_text())
    spec["topology"]["min_pods"] = 1
    job = tmp_path / "plan-tiny-elastic.yaml"
    job.write_text(yaml.safe_dump(spec))
    result = plan(job)
    assert result.returncode == 0, result.stderr[-3000:]
    full, degraded = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    degraded = degraded["degraded"]
    assert (full["devices"], full["microbatches"]) == (16, 2)
    # One pod holds the same 32-sequence batch in twice the microbatches, and sends nothing
    # over the data-center network.
    assert degraded["devices"] == 8 and degraded["mesh"] == {"pod": 1, "data": 4, "model": 2}
    assert (degraded["global_batch"], degraded["microbatches"]) == (32, 4)
    assert degraded["fits"] and degraded["cross_pod_bytes_per_step"] == 0
    assert degraded["predicted_step_s"] > 0
