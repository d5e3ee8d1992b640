"""README promises that only a real local Ray cluster can show, on a 2-pod job.

One cluster for the module, 2 pods x 1 fake TPU host x 4 chips (two JAX processes, the
(pod, data, model) = (2, 2, 2) mesh with the cross-pod gradient exchange), and three runs
of the same 30-step job, which poisons the data at step 25:

- the cluster is started by `palm run` itself, because the job says `topology.local: true`
  and no cluster is recorded (HOME points at an empty folder, so `~/.palm` is ours alone);
- the poison spikes the loss and both hosts roll back and skip in lock-step: the run ends
  with the parameters of the same job trained in one process (no Ray, one host, so nothing
  to agree on), which it cannot if a host restored or skipped differently;
- a second run also truncates its step-10 checkpoint (host 0) and then loses host 1 (SIGKILL
  at step 13): Ray Train restarts the group, every host takes host 0's verdict that step 10
  is damaged, restores step 5, and the run ends bitwise equal to the first run.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from palm_platform.cluster import local as cluster
from palm_platform.metrics.sink import read_records
from tests.support.local_cluster import BIN, final_params
from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multiprocess]

JOB = ROOT / "tests" / "jobs" / "loop-2pod.yaml"  # 2 pods x 1 host x 4 chips: 8 devices
STEPS = 30
POISON_STEP = 25  # the tiny model must have learned enough for poison to spike (test_loop.py)
DAMAGE_STEP, KILL_STEP = 11, 13  # damage the step-10 checkpoint, lose host 1 before step 15's
POISON = {"kind": "poison_batches", "step": POISON_STEP, "steps": 1}


def write_job(folder: Path, inject: list[dict]) -> Path:
    """The 2-pod loop job run on Ray: absolute output paths, the given faults."""
    spec = yaml.safe_load(JOB.read_text())
    spec["name"] = "ray-2pod"
    spec["run_dir"] = str(folder / "run")
    spec["checkpoint"]["directory"] = str(folder / "ckpt")
    spec["train"]["steps"] = STEPS
    spec["faults"].update(max_restarts=2, hang_timeout_s=60, init_timeout_s=60, inject=inject)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def palm_run(job: Path, home: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    """`palm run JOB` as a user runs it: no RAY_ADDRESS, the local cluster found via ~/.palm."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HOME=str(home), PATH=f"{BIN}:{env['PATH']}")
    return subprocess.run([BIN / "palm", "run", str(job)], env=env, capture_output=True,
                          text=True, timeout=timeout)


# What palm itself prints while a job runs (ray/run.py, metrics/status.py, ray/worker_output.py).
PALM_LINES = re.compile("|".join((
    r"step \d+: \S",  # an event's sentence (metrics/events.py), a held-out eval
    r"step \d+/\d+ ",  # the progress bar (outside a terminal: its last frame)
    r"run \S+$", r"  \S",  # the summary: its header, then indented lines
    r"host \d+/\d+: \S",  # a worker's warning about its own host
    r"FAULT step \d+",  # an injected fault, said once by the worker it hit
    r"checkpoint step \d+ (is damaged|was not committed)",  # a worker's checkpoint warnings
    r"discarded checkpoints \[[\d, ]+\] newer than rollback step \d+",
)))


def is_palm_line(line: str) -> bool:
    return bool(PALM_LINES.match(line))


def assert_bitwise_equal(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An empty HOME: `palm run` finds no recorded cluster; stops what it started there.
    (Not the shared `local_cluster` fixture: here `palm run` must bring the cluster up.)"""
    home = tmp_path_factory.mktemp("home")
    try:
        yield home
    finally:
        state = cluster.load_state(cluster.state_path(home / ".palm"))
        cluster.down(home / ".palm")
        if state is not None:
            shutil.rmtree(state.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(home, tmp_path_factory):
    """The poisoned job, started with no cluster up: `palm run` brings one up itself."""
    assert cluster.load_state(cluster.state_path(home / ".palm")) is None
    folder = tmp_path_factory.mktemp("reference")
    job = write_job(folder, [POISON])
    started = time.monotonic()
    run = palm_run(job, home)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return folder, run, time.monotonic() - started


@pytest.mark.timeout(600)
def test_topology_local_job_starts_the_local_cluster_itself(reference, home):
    state = cluster.load_state(cluster.state_path(home / ".palm"))
    assert state is not None and cluster.cluster_alive(state), "palm run recorded no live cluster"
    # the job's shape, as fake TPU hosts: a head and one node per host
    assert (state.pods, state.hosts_per_pod, state.chips_per_host) == (2, 1, 4)
    assert len(state.nodes) == 1 + 2
    records = read_records(reference[0] / "run" / "ray-2pod")
    start = next(r for r in records if r["kind"] == "start")
    assert start["hosts"] == 2 and start["devices"] == 8, start
    assert max(r["step"] for r in records if r["kind"] == "step") == STEPS


@pytest.mark.timeout(600)
def test_two_hosts_roll_back_in_lock_step_and_end_as_one_process_does(reference, tmp_path):
    folder, _, _ = reference
    records = read_records(folder / "run" / "ray-2pod")
    spikes = [r["step"] for r in records if r["kind"] == "spike"]
    rollbacks = [r for r in records if r["kind"] == "rollback"]
    assert spikes == [POISON_STEP] and len(rollbacks) == 1, [r["kind"] for r in records]
    assert rollbacks[0]["to_step"] <= POISON_STEP - 10  # the job's spike.rollback_steps
    assert all(r.get("pods_identical", True) for r in records if r["kind"] == "step")
    # The same job in this process: one host, so its rollback needs no agreement. Two hosts
    # that restored different steps or skipped different batches cannot end with its
    # parameters (the cross-pod mean mixes both pods' gradients into every update).
    from palm_platform.job import load_job
    from palm_platform.train.loop import Trainer

    job = load_job(write_job(tmp_path, [POISON]))
    trainer = Trainer(job, tmp_path / "run" / "ray-2pod")
    try:
        summary = trainer.run()
        one_process = jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()
    assert summary.steps == STEPS
    local = read_records(tmp_path / "run" / "ray-2pod")
    assert [(r["first_sequence"], r["end_sequence"]) for r in local if r["kind"] == "skip"] == \
        [(r["first_sequence"], r["end_sequence"]) for r in records if r["kind"] == "skip"]
    assert_bitwise_equal(final_params(folder / "job.yaml", STEPS), one_process)


@pytest.mark.timeout(900)
def test_2pod_run_with_damaged_checkpoint_and_killed_host_ends_bitwise_equal(
    reference, home, tmp_path
):
    folder, _, _ = reference
    nodes_before = [n.pid for n in cluster.load_state(cluster.state_path(home / ".palm")).nodes]
    job = write_job(tmp_path, [
        POISON,
        {"kind": "damage_checkpoint", "step": DAMAGE_STEP, "host": 0},
        {"kind": "kill_host", "step": KILL_STEP, "host": 1},
    ])
    run = palm_run(job, home)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    # the recorded cluster was reused, not started again
    assert [n.pid for n in cluster.load_state(cluster.state_path(home / ".palm")).nodes] == \
        nodes_before
    records = read_records(tmp_path / "run" / "ray-2pod")
    # Host 0's verdict on step 10, taken by both hosts: one restart, from step 5.
    assert [r["step"] for r in records if r["kind"] == "restart"] == [5], output[-3000:]
    damaged = [ln for ln in output.splitlines() if "checkpoint step 10 is damaged" in ln]
    assert len(damaged) == 1, output[-3000:]
    assert [r["step"] for r in records if r["kind"] == "spike"] == [POISON_STEP]
    # The terminal of a run with a kill, a damaged checkpoint and a spike: palm's lines only
    # (Ray's and JAX's are in the run's log file), no colour codes outside a terminal, and the
    # restart sentence says what died.
    foreign = [ln for ln in output.splitlines() if not is_palm_line(ln)]
    assert not foreign, foreign[:10]
    assert "\x1b[" not in output
    restart = [ln for ln in output.splitlines()  # the live sentence, not the summary's recap
               if ln.startswith("step") and "worker group restarted" in ln]
    assert len(restart) == 1 and "died" in restart[0], restart
    assert_bitwise_equal(final_params(folder / "job.yaml", STEPS), final_params(job, STEPS))
    # The goodput model (issue 29's validation, plan/goodput_check.py) on this run: from its
    # faults it names the steps the run resumed from, and from its measured components (step
    # time, start-up, saves, and on this shared machine the run's own restart seconds) it
    # predicts the goodput the run measured within 5 points.
    from palm_platform.job import load_job
    from palm_platform.plan import goodput_check

    figures = goodput_check.run_figures(records)
    prediction = goodput_check.predict(load_job(job), figures,
                                       restart_s=sum(figures.restart_s) / len(figures.restart_s))
    assert [(kind, resume) for kind, _, resume in prediction.resumes] == \
        [("kill_host", 5), ("poison_batches", records_rollback_to(records))]
    assert abs(prediction.goodput - figures.goodput) <= 0.05, \
        goodput_check.describe(prediction, figures, "the run's restarts")


def records_rollback_to(records: list[dict]) -> int:
    return next(r["to_step"] for r in records if r["kind"] == "rollback")
