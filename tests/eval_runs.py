"""A tiny trained run shared by the eval tests (one process, the conftest's 8 CPU devices)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from palm_platform.job import load_job
from palm_platform.train.loop import Trainer

JOB = Path(__file__).parent / "jobs" / "eval-tiny.yaml"


def train_run(folder: Path, **sections) -> Path:
    """Train tests/jobs/eval-tiny.yaml (sections replaced by `sections`) in `folder`;
    returns the run folder (holding job.json; checkpoints are in folder/ckpt)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(JOB.read_text())
    for key, value in sections.items():
        raw[key] = value
    (folder / "job.yaml").write_text(yaml.safe_dump(raw))
    job = load_job(folder / "job.yaml")
    trainer = Trainer(job, Path(job.run_dir))
    try:
        trainer.run()
    finally:
        trainer.close()
    return Path(job.run_dir)


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A copy of a run (its folder and checkpoints) whose job.json points at the copy."""
    import json

    shutil.copytree(run_dir.parent, dest)
    record = dest / run_dir.name / "job.json"
    job = json.loads(record.read_text())
    job["checkpoint"]["directory"] = str(dest / "ckpt")
    record.write_text(json.dumps(job))
    return dest / run_dir.name
