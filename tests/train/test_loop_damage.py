"""The loop with a `damage_checkpoint` fault: the damaged checkpoint is passed over on
restart, the run resumes from the previous good one, and ends with the parameters of the
uninterrupted run, bit for bit. (One process, two pods of fake CPU devices.)"""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from palm_platform.checkpoint.verification import verify
from palm_platform.job import load_job
from palm_platform.metrics.sink import read_records
from palm_platform.supervise.config import FaultInjection
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"
STEPS = 12  # checkpoints every 5 steps: 0, 5, 10, and 12 at the end


def _run(job, run_dir: Path, attempt: int = 0):
    trainer = Trainer(job, run_dir, attempt=attempt)
    try:
        summary = trainer.run()
        return summary, jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_damaged_checkpoint_is_skipped_on_restart_and_the_run_ends_bitwise_equal(tmp_path):
    shutil.copy(JOB, tmp_path / "job.yaml")
    job = load_job(tmp_path / "job.yaml")
    damaged_job = job.model_copy(update={
        "train": job.train.model_copy(update={"steps": STEPS}),
        # Fires before step 11: the newest finished checkpoint then is step 10.
        "faults": job.faults.model_copy(update={"inject": [
            FaultInjection(kind="damage_checkpoint", step=11)]}),
    })
    summary, uninterrupted = _run(damaged_job, tmp_path / "run")
    assert summary.steps == STEPS
    ckpt = Path(job.checkpoint.directory)
    # The fault truncates the newest checkpoint: the loop waits for the async save of step 10
    # before firing it, so exactly step 10 is damaged.
    report = verify(ckpt)
    damaged = [s.step for s in report.steps if s.damage]
    assert damaged == [10], damaged
    victim = damaged[0]
    good_before = max(s.step for s in report.steps if s.step < victim)
    # The host dies before anything newer is kept: the damaged checkpoint is the newest.
    for step in [s.step for s in report.steps if s.step > victim]:
        shutil.rmtree(ckpt / str(step))
    summary, resumed = _run(damaged_job, tmp_path / "run", attempt=1)
    assert summary.extra["start_step"] == good_before and summary.steps == STEPS
    restarts = [r for r in read_records(tmp_path / "run") if r["kind"] == "restart"]
    assert [r["step"] for r in restarts] == [good_before]
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert verify(ckpt, victim).ok  # written again, whole, by the resumed run
