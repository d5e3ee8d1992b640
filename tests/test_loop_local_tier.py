"""The loop with the RAM tier (one process, two pods of fake CPU devices): a crash after a
RAM save newer than the persistent checkpoint resumes from the RAM step, reads no byte of
persistent storage, and ends with the parameters of the uninterrupted run, bit for bit."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from palm_platform.checkpoint.config import LocalTierConfig
from palm_platform.job import load_job
from palm_platform.metrics import read_records
from palm_platform.supervise.faults import damage_checkpoint
from palm_platform.train.loop import Trainer

JOB = Path(__file__).parent / "jobs" / "loop-2pod.yaml"
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


def _run(job, run_dir: Path, attempt: int = 0, crash_after: int | None = None):
    def on_step(step: int) -> None:
        if step == crash_after:
            raise Crash(f"step {step}")

    trainer = Trainer(job, run_dir, attempt=attempt, on_step=on_step)
    try:
        summary = trainer.run()
        return summary, jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_crash_after_a_ram_save_resumes_from_ram_without_reading_persistent_storage(
        tmp_path):
    (tmp_path / "clean").mkdir()
    _, uninterrupted = _run(_job(tmp_path / "clean", ram=False), tmp_path / "clean" / "run")

    job = _job(tmp_path, ram=True)
    with pytest.raises(Crash):
        _run(job, tmp_path / "run", crash_after=9)
    ram_host = tmp_path / "ram" / "process-0"
    assert sorted(p.name for p in ram_host.iterdir()) == ["4", "8"]
    # Persistent step 6, damaged: a restore that read it would fail or fall back to 0.
    damage_checkpoint(Path(job.checkpoint.directory) / "6")
    summary, resumed = _run(job, tmp_path / "run", attempt=1)

    assert summary.extra["start_step"] == 8 and summary.steps == STEPS
    restored = [r for r in read_records(tmp_path / "run") if r["kind"] == "checkpoint_restored"]
    assert len(restored) == 1 and restored[0]["step"] == 8
    assert restored[0]["tier"] == "local" and restored[0]["bytes_persistent"] == 0
    assert restored[0]["bytes_local"] > 0 and restored[0]["bytes_peer"] == 0
    saved = [r for r in read_records(tmp_path / "run") if r["kind"] == "checkpoint_saved"]
    assert {r["step"] for r in saved if r.get("tier") == "local"} == {4, 8, 12}
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()  # -0.0 and +0.0 differ here
