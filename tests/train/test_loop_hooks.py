"""Hooks see a StepInfo, not the Trainer, and do not depend on their order.

A hook that asks the run to stop (`StopTraining`, as the Ctrl-C stop check does) at a
checkpoint step is put FIRST, before the metrics hook: every hook without state still sees
that step (its metrics record is written), the hooks with state (the checkpoint) are skipped,
and the run stops there. A hook with `needs_state` gets the state at its own cadence only.
(One process, two pods of fake CPU devices.)
"""

import shutil
from pathlib import Path

import jax
import pytest

from palm_platform.hook_protocol import Hook, StepInfo, StopTraining
from palm_platform.job import load_job
from palm_platform.metrics.sink import read_records
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"
STOP_AT = 10  # a checkpoint step (every_steps: 5)


class StopAt(Hook):
    def on_step(self, info: StepInfo) -> None:
        if info.step == STOP_AT:
            raise StopTraining(info.step)


class StateEvery3(Hook):
    every, needs_state = 3, True

    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def on_step(self, info: StepInfo) -> None:
        self.seen.append((info.step, int(jax.device_get(info.state.step))))


@pytest.mark.slow
def test_a_stop_asked_first_still_lets_the_other_hooks_see_the_step(tmp_path):
    shutil.copy(JOB, tmp_path / "job.yaml")
    job = load_job(tmp_path / "job.yaml")
    job = job.model_copy(update={"train": job.train.model_copy(update={"steps": 12})})
    with_state = StateEvery3()
    trainer = Trainer(job, Path(job.run_dir), hooks=(with_state,))
    trainer.hooks.insert(0, StopAt())  # before the metrics hook
    try:
        with pytest.raises(StopTraining) as stopped:
            trainer.run()
        trainer.stopped(stopped.value.step)
        saved = trainer.setup.checkpoints.persistent_steps()
    finally:
        trainer.close()
    assert stopped.value.step == STOP_AT
    records = read_records(Path(job.run_dir))
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, STOP_AT + 1))
    assert max(saved) == 5  # the stop step's checkpoint (a hook with state) was skipped
    assert with_state.seen == [(3, 3), (6, 6), (9, 9)]  # the state after each due step
    assert any(r["kind"] == "goodput" for r in records)  # on_end(step, None, None) ran
