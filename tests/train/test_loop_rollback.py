"""A loss-spike rollback inside the loop restores the parameters and the data position.

tests/train/test_loop.py shows a poisoned run recovers (the loss comes back down); this test shows
*what* was restored, by recording the state the loop checkpointed at each step (a spy on
`checkpointer.save`) and the state right after `Trainer._recover` returned: the parameters equal
the restored step's bit for bit, the data position is that step's, and the spike's data is
in the skip ranges. Without the restore, a loop that only skipped data (or only restored
parameters) would also bring the loss down, and test_loop.py would pass.
"""

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
POISON_STEP = 25  # the tiny model must have learned enough for poison to spike (as test_loop.py)


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rollback")
    shutil.copy(JOB, folder / "job.yaml")
    job = load_job(folder / "job.yaml")
    job = job.model_copy(update={
        "faults": job.faults.model_copy(update={"inject": [
            FaultInjection(kind="poison_batches", step=POISON_STEP, steps=2)]}),
        "train": job.train.model_copy(update={"steps": POISON_STEP + 3}),
    })
    trainer = Trainer(job, Path(job.run_dir))
    saved: dict[int, tuple] = {}
    after_rollback: list[dict] = []
    checkpointer = trainer.setup.checkpoints.persistent
    save, recover = checkpointer.save, trainer._recover

    def spy_save(step, state, data_state, ledger):
        save(step, state, data_state, ledger)
        saved[step] = (jax.tree.map(np.asarray, state.params), json.loads(json.dumps(data_state)))

    def spy_recover(spike, bad):
        state, step = recover(spike, bad)
        after_rollback.append({
            "spike_step": spike.step, "step": int(jax.device_get(state.step)),
            "params": jax.tree.map(np.asarray, state.params),
            "data": trainer.setup.pipeline.get_state(), "spike_data": bad.batch.data_state,
            "detector_last": trainer.supervision.detector.state_dict()["last_step"],
        })
        return state, step

    checkpointer.save, trainer._recover = spy_save, spy_recover
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    return summary, saved, after_rollback, read_records(Path(job.run_dir)), job


@pytest.mark.slow
def test_rollback_restores_the_checkpointed_parameters_bitwise(rolled_back):
    summary, saved, after, _, job = rolled_back
    assert [a["spike_step"] for a in after] == [POISON_STEP]
    restored = after[0]["step"]
    assert restored <= POISON_STEP - job.faults.spike.rollback_steps and restored in saved
    for a, b in zip(jax.tree.leaves(saved[restored][0]), jax.tree.leaves(after[0]["params"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # ... and they are not the parameters the spike step started from.
    newest_before_spike = max(s for s in saved if s <= POISON_STEP)
    assert newest_before_spike > restored
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(saved[newest_before_spike][0]), jax.tree.leaves(after[0]["params"]),
        strict=True))
    assert summary.steps == job.train.steps


@pytest.mark.slow
def test_rollback_restores_the_data_position_and_skips_the_spikes_batches(rolled_back):
    _, saved, after, records, job = rolled_back
    restored, data = after[0]["step"], after[0]["data"]
    assert data["next_sequence"] == saved[restored][1]["next_sequence"]
    assert data["next_sequence"] < after[0]["spike_data"]["next_sequence"]
    skip = next(r for r in records if r["kind"] == "skip")
    batch = job.train.batch_size_at(POISON_STEP)
    assert skip["first_sequence"] == after[0]["spike_data"]["next_sequence"]
    assert skip["end_sequence"] - skip["first_sequence"] == job.faults.spike.skip_batches * batch
    assert [skip["first_sequence"], skip["end_sequence"]] in data["skip_ranges"]
    # The spike detector forgot the steps that are replayed.
    assert after[0]["detector_last"] == restored - 1
