"""A preemption notice (SIGTERM to one worker) on the local fake-TPU cluster: every host saves
one agreed step, Ray Train restarts the group in place, and the run resumes at that step.

One cluster for the module (the shared `local_cluster`, 1 pod x 2 hosts x 2 chips), two runs
of the 2-host job: a clean one, and one whose host 1 gets SIGTERM before step 7 (the
`preempt` fault), with 13 steps left for the hosts to agree. Checkpoints every 5 steps, so
the agreed step's save is the preemption's own (unless it falls on one). The preempted run
must record `preempt` at the agreed step, restart from that step, compute no step twice,
and end with the clean run's parameters bit for bit.
"""

import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from palm_platform.metrics.sink import read_records
from tests.support.local_cluster import BIN, driver_env, final_params
from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multiprocess]

JOB = ROOT / "tests" / "jobs" / "ray-2host.yaml"
STEPS, PREEMPT_STEP = 20, 6


def write_job(folder: Path, inject: list[dict]) -> Path:
    spec = yaml.safe_load(JOB.read_text())
    spec["run_dir"] = str(folder / "run")
    spec["checkpoint"].update(directory=str(folder / "ckpt"), every_steps=5, keep_last=5)
    spec["train"]["steps"] = STEPS
    spec["metrics"]["wandb_mode"] = "disabled"
    # No restart budget at all: a preemption must not need one.
    spec["faults"].update(max_restarts=0, inject=inject)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def palm_run(job: Path, cluster) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "palm", "run", str(job)], env=driver_env(cluster),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(900)
def test_sigterm_to_one_worker_saves_the_agreed_step_and_resumes_there_bitwise(
    local_cluster, tmp_path
):
    clean = write_job(tmp_path / "clean", [])
    run = palm_run(clean, local_cluster)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    job = write_job(tmp_path / "preempted", [{"kind": "preempt", "step": PREEMPT_STEP,
                                              "host": 1}])
    run = palm_run(job, local_cluster)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    records = read_records(tmp_path / "preempted" / "run" / "ray-2host")
    preempts = [r for r in records if r["kind"] == "preempt"]
    assert len(preempts) == 1, [r["kind"] for r in records]
    agreed = preempts[0]["step"]
    # JAX's sync point is one past the highest step any host had reached when its protocol
    # ran (a barrier through the coordination service: a few steps on a loaded machine)
    assert PREEMPT_STEP < agreed < STEPS, agreed
    assert preempts[0]["mechanism"] == "jax"
    restored = [r for r in records if r["kind"] == "checkpoint_restored"]
    assert [r["step"] for r in restored] == [agreed], [r["kind"] for r in records]
    # Restarted in place: one Ray Train run (a relaunch by `palm run` would start a second,
    # with its own controller, under RUN_DIR/ray).
    ray_runs = list((tmp_path / "preempted" / "run" / "ray-2host" / "ray").iterdir())
    assert len(ray_runs) == 1, ray_runs
    # No step computed twice: each step is logged once, and none after the restore is old.
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps
    assert min(r["step"] for r in records
               if r["kind"] == "step" and r["time"] > restored[0]["time"]) == agreed + 1
    # The restart's account (supervise/restart_account.py): nothing wasted, every second by cause.
    (restart,) = [r for r in records if r["kind"] == "restart"]
    assert restart["step"] == agreed and restart["recomputed_steps"] == 0
    assert restart["wasted_progress_s"] == 0
    causes = ("infrastructure_recovery_s", "initialization_s", "checkpoint_restore_s",
              "program_startup_s", "data_loading_s", "other_s")
    assert abs(sum(restart[c] for c in causes) - restart["recovery_s"]) < 0.01, restart
    for a, b in zip(jax.tree.leaves(final_params(clean, STEPS)),
                    jax.tree.leaves(final_params(job, STEPS)), strict=True):
        np.testing.assert_array_equal(a, b)
