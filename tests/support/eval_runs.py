"""A tiny trained run shared by the eval tests (one process, the conftest's 8 CPU devices)."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import yaml

from palm_platform.job import load_job
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS
from tests.support.xdist import session_root

JOB = TEST_JOBS / "eval-tiny.yaml"


_TRAINED: dict[str, tuple[Path, dict]] = {}


def shared_run(tmp_path_factory, key: str = "default", **sections) -> tuple[Path, dict]:
    """One trained run per key for the whole pytest session (several test files use it):
    (run folder, facts about the trainer such as the eval step's compile count).

    Under pytest-xdist the workers share it too: the first to ask trains it in the session's
    base folder (under a file lock) and records its facts beside it; the others wait for the
    lock and read the same folder."""
    if key not in _TRAINED:
        _TRAINED[key] = _train_once(tmp_path_factory, key, sections)
    return _TRAINED[key]


def _train_once(tmp_path_factory, key: str, sections: dict) -> tuple[Path, dict]:
    root = session_root(tmp_path_factory)
    if root is None:  # no xdist workers: this process is the session
        facts: dict = {}
        run_dir = train_run(tmp_path_factory.mktemp(f"run-{key}"), facts=facts, **sections)
        return run_dir, facts
    done = root / f"run-{key}.json"
    with open(root / f"run-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            facts = {}
            run_dir = train_run(root / f"run-{key}", facts=facts, **sections)
            done.write_text(json.dumps({"run_dir": str(run_dir), "facts": facts}))
        record = json.loads(done.read_text())
    return Path(record["run_dir"]), record["facts"]


def train_run(folder: Path, facts: dict | None = None, devices: list | None = None,
              **sections) -> Path:
    """Train tests/jobs/eval-tiny.yaml (sections replaced by `sections`) in `folder`, on
    `devices` (default: all of them); returns the run folder (holding job.json; checkpoints
    are in folder/ckpt)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(JOB.read_text())
    for key, value in sections.items():
        raw[key] = value
    (folder / "job.yaml").write_text(yaml.safe_dump(raw))
    job = load_job(folder / "job.yaml")
    trainer = Trainer(job, Path(job.run_dir), devices=devices)
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
    shutil.copytree(run_dir.parent, dest)
    record = dest / run_dir.name / "job.json"
    job = json.loads(record.read_text())
    job["checkpoint"]["directory"] = str(dest / "ckpt")
    record.write_text(json.dumps(job))
    return dest / run_dir.name
