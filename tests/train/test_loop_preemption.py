"""The loop with a `preempt` fault in one process (`palm run --direct`'s path): SIGTERM is a
notice, not an exit; the loop saves that step, raises Preempted, and the next attempt resumes
there, computes no step twice, and ends bitwise equal to the uninterrupted run."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from palm_platform.hook_protocol import Preempted
from palm_platform.job import load_job
from palm_platform.metrics.sink import read_records
from palm_platform.supervise.config import FaultInjection
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"
STEPS, PREEMPT_STEP = 9, 3  # checkpoints every 5 steps: the preemption's save is its own


def _job(tmp_path: Path, name: str, inject: list[FaultInjection]):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(JOB, folder / "job.yaml")
    job = load_job(folder / "job.yaml")
    return job.model_copy(update={
        "train": job.train.model_copy(update={"steps": STEPS}),
        "faults": job.faults.model_copy(update={"inject": inject}),
    })


def _params(trainer: Trainer):
    try:
        trainer.run()
        return jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_sigterm_saves_its_step_and_the_resume_recomputes_nothing(tmp_path):
    clean = _job(tmp_path, "clean", [])
    uninterrupted = _params(Trainer(clean, Path(clean.run_dir)))

    job = _job(tmp_path, "preempted", [FaultInjection(kind="preempt", step=PREEMPT_STEP)])
    first = Trainer(job, Path(job.run_dir))
    try:
        with pytest.raises(Preempted) as preempted:
            first.run()
    finally:
        first.close()
    agreed = preempted.value.step
    # one process: nothing to agree on; the notice came before batch 3, which ends step 4
    assert agreed == PREEMPT_STEP + 1
    resumed = _params(Trainer(job, Path(job.run_dir), attempt=1))
    records = read_records(Path(job.run_dir))
    assert [r["step"] for r in records if r["kind"] == "preempt"] == [agreed]
    assert [r["mechanism"] for r in records if r["kind"] == "preempt"] == ["signal"]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps  # none computed twice
    (restart,) = [r for r in records if r["kind"] == "restart"]
    assert restart["step"] == agreed and restart["recomputed_steps"] == 0
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
