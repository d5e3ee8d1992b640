"""The loop with the RAM tier (one process, two pods of fake CPU devices): a crash after a
RAM save newer than the persistent checkpoint resumes from the RAM step and reads no byte of
persistent storage; with the RAM folder lost too, the next resume takes the persistent step;
the run ends with the parameters of the uninterrupted run, bit for bit, and its RAM given back."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from palm_platform.checkpoint.config import LocalTierConfig
from palm_platform.hook_protocol import Hook, StepInfo, StopTraining
from palm_platform.job import load_job
from palm_platform.metrics.sink import read_records
from palm_platform.run_dir import RunDir
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"
STEPS = 12  # persistent every 6 (0, 6, 12), RAM every 4 (4, 8, 12)


class Crash(RuntimeError):
    pass


def _job(tmp_path: Path, *, ram: bool):
    shutil.copy(JOB, tmp_path / "job.yaml")
    job = load_job(tmp_path / "job.yaml")
    local = LocalTierConfig(directory=str(tmp_path / "ram"), every_steps=4) if ram else None
    return job.model_copy(update={
        "train": job.train.model_copy(update={"steps": STEPS}),
        "checkpoint": job.checkpoint.model_copy(update={"every_steps": 6, "local": local}),
    })


class CrashAfter(Hook):
    """A process dying after `step` (before the next save could start)."""

    def __init__(self, step: int | None):
        self.step = step

    def on_step(self, info: StepInfo) -> None:
        if info.step == self.step:
            raise Crash(f"step {info.step}")


def _run(job, run_dir: Path, attempt: int = 0, crash_after: int | None = None):
    trainer = Trainer(job, run_dir, attempt=attempt, hooks=(CrashAfter(crash_after),))
    try:
        summary = trainer.run()
        return summary, jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()


def _restored(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir) if r["kind"] == "checkpoint_restored"]


@pytest.mark.slow
def test_a_crash_after_a_ram_save_resumes_from_ram_and_without_ram_from_persistent_storage(
        tmp_path):
    (tmp_path / "clean").mkdir()
    _, uninterrupted = _run(_job(tmp_path / "clean", ram=False), tmp_path / "clean" / "run")

    job = _job(tmp_path, ram=True)
    with pytest.raises(Crash):
        _run(job, tmp_path / "run", crash_after=9)
    ram_host = tmp_path / "ram" / "process-0"
    assert sorted(p.name for p in ram_host.iterdir()) == ["4", "8"]
    # Persistent step 6's arrays moved away: a restore that read them would fail.
    ckpt = Path(job.checkpoint.directory)
    (ckpt / "6" / "state").rename(tmp_path / "step-6-state")
    with pytest.raises(Crash):
        _run(job, tmp_path / "run", attempt=1, crash_after=11)
    first = _restored(tmp_path / "run")[-1]
    assert first["step"] == 8 and first["tier"] == "local"
    assert first["bytes_persistent"] == 0 and first["bytes_local"] > 0 and first["bytes_peer"] == 0
    # The goodput file was saved with RAM step 8 too: batches 6 and 7 (states 7 and 8), which
    # the restore kept, stay productive; saved with persistent step 6 only, their seconds
    # were charged to "restart". Batch 8 (state 9, lost with the crash) is not in it.
    goodput = json.loads(RunDir(tmp_path / "run").goodput.read_text())
    kept = {s for s, _ in goodput["step_seconds"]}
    assert {6, 7} <= kept and 8 not in kept, sorted(kept)

    # Both copies of step 8 lost (this host's RAM folder cleared): persistent step 6.
    (tmp_path / "step-6-state").rename(ckpt / "6" / "state")
    shutil.rmtree(ram_host)
    summary, resumed = _run(job, tmp_path / "run", attempt=2)
    second = _restored(tmp_path / "run")[-1]
    assert second["step"] == 6 and second["tier"] == "persistent"
    assert second["bytes_persistent"] > 0 and second["bytes_local"] == 0
    assert summary.extra["start_step"] == 6 and summary.steps == STEPS
    saved = [r for r in read_records(tmp_path / "run") if r["kind"] == "checkpoint_saved"]
    assert {r["step"] for r in saved if r.get("tier") == "local"} == {4, 8, 12}
    # The finished run gave its RAM back (step 12 is persistent), the crashed ones did not.
    assert not (tmp_path / "ram").exists()
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()  # -0.0 and +0.0 differ here


class StopAfter(Hook):
    """A Ctrl-C's agreed stop (ray/interrupt.py raises the same) after `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, info: StepInfo) -> None:
        if info.step == self.step:
            raise StopTraining(info.step)


@pytest.mark.slow
def test_a_stopped_run_gives_its_ram_back(tmp_path):
    job = _job(tmp_path, ram=True)
    trainer = Trainer(job, tmp_path / "run", hooks=(StopAfter(5),))
    try:
        with pytest.raises(StopTraining):
            trainer.run()
        assert sorted(p.name for p in (tmp_path / "ram" / "process-0").iterdir()) == ["4"]
        trainer.stopped(5)  # what the Ray worker does on a stop or a preemption
        assert not (tmp_path / "ram").exists()
    finally:
        trainer.close()
