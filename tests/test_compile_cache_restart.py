"""A restart loads every train step from the persistent compilation cache, including the
batch sizes of the schedule the killed attempt never reached (compiled ahead of time)."""

import shutil
from pathlib import Path

import pytest

from palm_platform.job import load_job
from palm_platform.metrics import read_records
from palm_platform.train.config import BatchPhase
from palm_platform.train.loop import Trainer
from palm_platform.train.precompile import later_batch_sizes

JOB = Path(__file__).parent / "jobs" / "loop-2pod.yaml"


class HostLost(Exception):
    """Stands in for the killed host: the attempt ends mid-run, as under Ray."""


def test_later_batch_sizes_are_the_phases_still_ahead():
    phases = [BatchPhase(sequences=8, until_step=4), BatchPhase(sequences=16, until_step=9),
              BatchPhase(sequences=8)]
    at = lambda step: next(p.sequences for p in phases if p.until_step is None or step < p.until_step)  # noqa: E731
    assert later_batch_sizes(at, [4, 9], first_step=0, last_step=20) == [16]
    assert later_batch_sizes(at, [4, 9], first_step=5, last_step=20) == [8]
    assert later_batch_sizes(at, [4, 9], first_step=0, last_step=4) == []  # the run ends first
    assert later_batch_sizes(at, [4, 9], first_step=10, last_step=20) == []


@pytest.mark.slow
def test_a_restart_after_a_kill_misses_no_train_step(tmp_path):
    shutil.copy(JOB, tmp_path / "job.yaml")
    job = load_job(tmp_path / "job.yaml")
    train = job.train.model_copy(update={"steps": 6, "batch_schedule": [
        BatchPhase(sequences=8, until_step=4), BatchPhase(sequences=16)]})
    checkpoint = job.checkpoint.model_copy(update={"every_steps": 2})
    job = job.model_copy(update={"train": train, "checkpoint": checkpoint})

    def kill_at_3(step):
        if step == 3:  # before the schedule reaches 16 sequences
            raise HostLost

    first = Trainer(job, Path(job.run_dir), attempt=0, on_step=kill_at_3)
    try:
        with pytest.raises(HostLost):
            first.run()
    finally:
        first.close()
    assert first.compile_cache.counts()["misses"] >= 2  # both train steps were compiled

    second = Trainer(job, Path(job.run_dir), attempt=1)
    try:
        summary = second.run()
    finally:
        second.close()
    assert summary.steps == 6
    counts = second.compile_cache.counts()
    assert counts["misses"] == 0 and counts["hits"] >= 2, counts
    records = read_records(Path(job.run_dir))
    restart = next(i for i, r in enumerate(records) if r["kind"] == "restart")
    compiled = [r for r in records[restart:] if r["kind"] == "compiled"]
    assert sorted(r["batch_size"] for r in compiled) == [8, 16]
    assert all(r["cache_misses"] == 0 for r in compiled)
