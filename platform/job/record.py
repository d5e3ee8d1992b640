"""The job as a run trained it, recorded in its run folder (`job.json`) for later commands
(`palm eval`, `palm generate`, `palm data sample` read it back: eval/restore.py)."""

from __future__ import annotations

import json
from pathlib import Path

from palm_platform.atomic_write import write_atomic
from palm_platform.job import Job
from palm_platform.run_dir import RunDir


def record_job(run_dir: Path, job: Job) -> None:
    """Write the job (paths already resolved) into the run folder, for later commands."""
    path = RunDir(Path(run_dir)).job_record
    # Atomic: `palm eval` / `palm generate` may read it while a restarted run rewrites it.
    write_atomic(path, json.dumps(job.model_dump(mode="json"), indent=1))
