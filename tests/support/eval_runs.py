"""A tiny trained run shared by the eval tests (one process, the conftest's 8 CPU devices)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from palm_platform.job import load_job
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "eval-tiny.yaml"


_TRAINED: dict[str, tuple[Path, dict]] = {}


def shared_run(tmp_path_factory, key: str = "default", **sections) -> tuple[Path, dict]:
    """One trained run per key for the whole pytest process (several test files use it):
    (run folder, facts about the trainer such as the eval step's compile count)."""
    if key not in _TRAINED:
        facts: dict = {}
        run_dir = train_run(tmp_path_factory.mktemp(f"run-{key}"), facts=facts, **sections)
        _TRAINED[key] = (run_dir, facts)
    return _TRAINED[key]


def train_run(folder: Path, facts: dict | None = None, **sections) -> Path:
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
        step_fn = getattr(trainer.setup.evaluator, "step_fn", None)
        if facts is not None and step_fn is not None:
            facts["eval_compiles"] = step_fn._cache_size()
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
