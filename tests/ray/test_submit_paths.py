"""`ray job submit --working-dir .`: outputs never land in Ray's per-session package copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from palm_platform.job import load_job
from palm_platform.ray.submit_paths import EphemeralOutputError, place_outputs, ray_package_of
from tests.support.paths import ROOT


@pytest.fixture
def package(tmp_path) -> Path:
    """What Ray unpacks for `--working-dir .`: the project's jobs/ inside a session folder."""
    root = tmp_path / "palm-ray-x" / "session_2026-11-23_18-00-00_1" / "runtime_resources" \
        / "working_dir_files" / "_ray_pkg_0123abcd"
    (root / "jobs").mkdir(parents=True)
    shutil.copy(ROOT / "jobs" / "local-cpu.yaml", root / "jobs")
    return root


def test_a_job_outside_ray_keeps_its_paths():
    job = load_job(ROOT / "jobs" / "local-cpu.yaml")
    assert ray_package_of(ROOT / "jobs") is None
    assert place_outputs(job, ROOT / "jobs" / "local-cpu.yaml", None) == job


def test_relative_outputs_inside_the_package_are_refused_with_the_fix(package):
    job_path = package / "jobs" / "local-cpu.yaml"
    job = load_job(job_path)
    assert job.run_dir == str(package / "runs")  # where Ray's copy would have put them
    with pytest.raises(EphemeralOutputError) as error:
        place_outputs(job, job_path, None)
    message = str(error.value)
    assert "--submit-dir \"$PWD\"" in message and "gs://" in message and "\n" not in message


def test_submit_dir_moves_outputs_to_the_same_place_under_it(package, tmp_path):
    job_path = package / "jobs" / "local-cpu.yaml"
    submit_dir = tmp_path / "project"
    job = place_outputs(load_job(job_path), job_path, submit_dir)
    assert job.run_dir == str(submit_dir / "runs")
    assert job.checkpoint.directory == str(submit_dir / "runs" / "local-cpu" / "checkpoints")
    assert job.data.tokenizer == "builtin:default"  # inputs stay in the uploaded copy


def test_absolute_and_bucket_outputs_are_kept(package, tmp_path):
    job_path = package / "jobs" / "local-cpu.yaml"
    text = job_path.read_text().replace("run_dir: ../runs", f"run_dir: {tmp_path / 'abs'}")
    job_path.write_text(text.replace("directory: ../runs/local-cpu/checkpoints",
                                     "directory: gs://bucket/ckpt"))
    job = place_outputs(load_job(job_path), job_path, None)
    assert (job.run_dir, job.checkpoint.directory) == (str(tmp_path / "abs"), "gs://bucket/ckpt")


def test_palm_run_in_a_ray_package_exits_2_before_touching_ray(package):
    run = subprocess.run([sys.executable, "-m", "palm_platform.cli", "run", "jobs/local-cpu.yaml"],
                         cwd=package, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "RAY_ADDRESS": "127.0.0.1:1"})
    assert run.returncode == 2, run.stderr
    assert (
        run.stderr.count("\n") == 1
        and "checkpoint.directory" in run.stderr
        and "Traceback" not in run.stderr
    )



@pytest.mark.parametrize("name", ["palm8b", "palm62b", "palm540b"])
def test_the_tpu_job_files_submit_as_written(package, name):
    """`ray job submit --working-dir . -- palm run jobs/palm540b.yaml` (README, infra/)."""
    shutil.copy(ROOT / "jobs" / f"{name}.yaml", package / "jobs")
    job_path = package / "jobs" / f"{name}.yaml"
    job = place_outputs(load_job(job_path), job_path, None)  # no EphemeralOutputError
    assert job.checkpoint.directory.startswith("gs://")
    assert job.run_dir == str(Path("~/palm-runs").expanduser())
