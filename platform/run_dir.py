"""A run's folder, RUN_DIR/NAME: every file a run keeps there, named in one place.

    metrics.jsonl     step records and events (metrics/sink.py), read by status and W&B
    ledger.json       spikes, rollbacks, skips, restarts, resizes (supervise/ledger.py)
    goodput.json      goodput and badput so far (metrics/goodput.py)
    summary.json      the run's summary, written by process 0 at the end
    attempts          the worker group's start count in this launch (ray/worker.py)
    job.json          the job as trained, for `palm eval|generate` (eval/restore.py)
    eval_split.json   the held-out split (data/heldout_split.py)
    faults/           which injected faults fired (supervise/faults.py)
    compile-cache/    JAX's persistent compilation cache, unless train.compile_cache says
    logs/workers.log  every worker line (ray/worker_output.py)
    ray/              Ray Train's own run files

Pure paths (no I/O), so the driver, the workers and the CLIs agree on them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, job) -> RunDir:
        """The run folder of a job: its `run_dir`, then its name."""
        return cls(Path(job.run_dir) / job.name)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def ledger(self) -> Path:
        return self.path / "ledger.json"

    @property
    def goodput(self) -> Path:
        return self.path / "goodput.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def attempts(self) -> Path:
        return self.path / "attempts"

    @property
    def job_record(self) -> Path:
        return self.path / "job.json"

    @property
    def eval_split(self) -> Path:
        return self.path / "eval_split.json"

    @property
    def data_error(self) -> Path:
        """A damaged token store met in this launch: never retried (data/read_failure.py)."""
        return self.path / "data_error.json"

    @property
    def faults(self) -> Path:
        return self.path / "faults"

    @property
    def compile_cache(self) -> Path:
        return self.path / "compile-cache"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def ray(self) -> Path:
        return self.path / "ray"
