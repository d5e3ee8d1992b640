"""`palm run --direct`: the train loop in one process, without Ray; here with PaLM's batch
ramp and gradient-accumulation microbatches, which the loop picks per step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PALM = Path(sys.executable).parent / "palm"
SEQ_LEN = 32


def _job(tmp_path: Path, name: str, microbatch_sequences: int | None, hosts: int = 1) -> Path:
    train = {"steps": 6, "seq_len": SEQ_LEN,
             "batch_schedule": [{"sequences": 4, "until_step": 3}, {"sequences": 8}]}
    if microbatch_sequences:
        train["microbatch_sequences"] = microbatch_sequences
    job = {
        "name": name, "model": {"preset": "palm-tiny"},
        "topology": {"pods": 1, "hosts_per_pod": hosts, "chips_per_host": 4,
                     "ici_topology": "2x2x1" if hosts == 1 else "2x2x2", "local": True},
        "mesh": {"model": 2}, "train": train, "optimizer": {"constant_steps": 10},
        "checkpoint": {"directory": f"ckpt-{name}", "every_steps": 5},
        "metrics": {"wandb_mode": "disabled"}, "run_dir": "runs",
        "data": {"store": "store"},  # the embedded corpus's token store, under tmp_path
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _palm_run_direct(tmp_path: Path, job: Path) -> subprocess.CompletedProcess:
    # As on a laptop: the job sets 4 devices and the CPU platform (no JAX_PLATFORMS given).
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.run([PALM, "run", "--direct", str(job)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def _steps(tmp_path: Path, name: str) -> list[dict]:
    lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


def test_direct_refuses_a_multi_host_job_with_exit_2(tmp_path):
    out = _palm_run_direct(tmp_path, _job(tmp_path, "two-hosts", None, hosts=2))
    assert out.returncode == 2
    assert "--direct runs one host; this job has 2" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
def test_direct_run_ramps_the_batch_and_accumulates_microbatches(tmp_path):
    out = _palm_run_direct(tmp_path, _job(tmp_path, "micro", microbatch_sequences=4))
    assert out.returncode == 0, out.stderr[-3000:]
    # No store yet: prepared first, in this process (one line each way), then trained.
    assert "token store missing" in out.stderr and "token store ready" in out.stderr
    assert "runs/micro" in out.stdout  # the summary printed at the end
    assert "TPU" not in out.stderr, out.stderr[:2000]  # libtpu never started on a local job
    steps = _steps(tmp_path, "micro")
    assert [r["batch_size"] for r in steps] == [4, 4, 4, 8, 8, 8]
    assert [r["tokens"] for r in steps] == [4 * SEQ_LEN] * 3 + [8 * SEQ_LEN] * 3
    assert [r["compiled"] for r in steps] == [True, False, False, True, False, False]
    # The same job without microbatches: one batch of 8 and two microbatches of 4 give the
    # same loss and the same gradient norm (a sum instead of a mean would double it).
    out = _palm_run_direct(tmp_path, _job(tmp_path, "whole", microbatch_sequences=None))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "token store" not in out.stderr  # current: read as it is
    for micro, whole in zip(steps, _steps(tmp_path, "whole"), strict=True):
        assert micro["loss"] == pytest.approx(whole["loss"], rel=1e-4)
        assert micro["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-3)
