"""The train loop in one process over two pods of fake CPU devices: checkpoints, spikes,
rollback and skip, determinism, pod consistency. (Under Ray: tests/ray/test_run_ray.py.)"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from palm_platform.job import load_job
from palm_platform.metrics.sink import read_records
from palm_platform.supervise.config import FaultInjection
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"
POISON = {"kind": "poison_batches", "step": 25, "steps": 2}


def train(tmp_path: Path, name: str, inject=(), steps=None):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(JOB, folder / "job.yaml")
    job = load_job(folder / "job.yaml")
    faults = job.faults.model_copy(update={"inject": [FaultInjection(**f) for f in inject]})
    train_section = job.train if steps is None else job.train.model_copy(update={"steps": steps})
    job = job.model_copy(update={"faults": faults, "train": train_section})
    trainer = Trainer(job, Path(job.run_dir))
    try:
        summary = trainer.run()
        params = jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()
    return summary, params, read_records(Path(job.run_dir)), job


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return train(tmp_path_factory.mktemp("clean"), "clean")


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    return train(tmp_path_factory.mktemp("poisoned"), "poisoned", inject=[POISON])


@pytest.mark.slow
def test_loop_trains_and_checkpoints(clean):
    summary, _, records, job = clean
    losses = [r["loss"] for r in records if r["kind"] == "step"]
    assert summary.steps == job.train.steps and len(losses) == job.train.steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    saved = {r["step"] for r in records if r["kind"] == "checkpoint_saved"}
    assert {5, 10, 35, 36} <= saved


@pytest.mark.slow
def test_pods_hold_bitwise_identical_parameters_after_every_step(clean):
    steps = [r for r in clean[2] if r["kind"] == "step"]
    assert steps and all(r["pods_identical"] for r in steps)


@pytest.mark.slow
def test_poisoned_batches_are_detected_rolled_back_and_skipped(poisoned, clean):
    summary, params, records, job = poisoned
    spikes = [r for r in records if r["kind"] == "spike"]
    rollbacks = [r for r in records if r["kind"] == "rollback"]
    skips = [r for r in records if r["kind"] == "skip"]
    assert [s["step"] for s in spikes] == [25]
    assert rollbacks[0]["to_step"] <= 25 - job.faults.spike.rollback_steps
    # The skipped data covers every poisoned sequence: they are never trained on again.
    poisoned_ranges = json.loads(
        (Path(job.run_dir) / "faults")
        .joinpath(
            next(p.name for p in (Path(job.run_dir) / "faults").iterdir() if "poison" in p.name)
        )
        .read_text()
    )
    assert skips[0]["first_sequence"] <= poisoned_ranges["first_sequence"]
    assert skips[0]["end_sequence"] >= poisoned_ranges["end_sequence"]
    # After the rollback no step's loss spikes, and the run ends close to a clean run.
    replayed = [r for r in records if r["kind"] == "step" and r["time"] > rollbacks[0]["time"]]
    assert max(r["loss"] for r in replayed) < spikes[0]["loss"]
    assert summary.final_loss == pytest.approx(clean[0].final_loss, abs=0.3)
    ledger = json.loads((Path(job.run_dir) / "ledger.json").read_text())
    assert [e["kind"] for e in ledger["events"]][:3] == ["spike", "rollback", "skip"]


@pytest.mark.slow
def test_same_injected_faults_give_bitwise_identical_parameters(poisoned, tmp_path):
    _, again, _, _ = train(tmp_path, "again", inject=[POISON])
    for a, b in zip(jax.tree.leaves(poisoned[1]), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_goodput_counts_recomputation_after_a_rollback(poisoned):
    goodput = [r for r in poisoned[2] if r["kind"] == "goodput"][-1]
    assert 0 < goodput["goodput"] < 1
    assert goodput["badput_recomputation_s"] > 0 and goodput["badput_compile_s"] > 0


@pytest.mark.slow
def test_resuming_from_a_checkpoint_gives_the_uninterrupted_parameters(clean, tmp_path):
    # The clean run's checkpoints, cut back to step 25 as if the run had died after it.
    job = clean[3]
    checkpoints = tmp_path / "ckpt"
    shutil.copytree(job.checkpoint.directory, checkpoints)
    kept = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert 25 in kept
    for step in kept:
        if step > 25:
            shutil.rmtree(checkpoints / str(step))
    resumed_job = job.model_copy(update={
        "checkpoint": job.checkpoint.model_copy(update={"directory": str(checkpoints)})})
    trainer = Trainer(resumed_job, tmp_path / "run")
    try:
        summary = trainer.run()  # picks up at step 25, data position included
        resumed = jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()
    assert summary.extra["start_step"] == 25 and summary.steps == job.train.steps
    for a, b in zip(jax.tree.leaves(clean[1]), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
