"""Find a run's job and restore its parameters for generation and evaluation (one process).

A run folder records the job that trained it in `job.json` (written by the train loop);
`palm generate` / `palm eval` accept either that folder or the checkpoint directory inside
it, or any directory with `--job FILE`. The job says the model preset, the tokenizer and
the data (for memorization and the held-out split).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palm_platform.atomic_write import write_atomic
from palm_platform.job import Job, JobError, load_job

log = logging.getLogger(__name__)

JOB_RECORD = "job.json"


class EvalInputError(ValueError):
    """Bad input to `palm generate` / `palm eval`: one line that names the thing and the fix."""


def record_job(run_dir: Path, job: Job) -> None:
    """Write the job (paths already resolved) into the run folder, for later commands."""
    path = Path(run_dir) / JOB_RECORD
    # Atomic: `palm eval` / `palm generate` may read it while a restarted run rewrites it.
    write_atomic(path, json.dumps(job.model_dump(mode="json"), indent=1))


def find_job(target: str | Path, job_file: str | Path | None = None) -> tuple[Job, Path]:
    """(job, run folder) for a run folder, a checkpoint directory inside one, or --job."""
    target = Path(target)
    if job_file is not None:
        try:
            return load_job(job_file), target
        except JobError as error:
            raise EvalInputError(str(error).splitlines()[0]) from None
    if not target.exists():
        raise EvalInputError(f"{target}: no such run folder or checkpoint directory")
    for folder in (target, target.parent):
        record = folder / JOB_RECORD
        if record.is_file():
            try:
                return Job.model_validate(json.loads(record.read_text())), folder
            except ValueError as error:
                raise EvalInputError(
                    f"{record}: not a job record ({str(error).splitlines()[0]}). Fix: pass --job "
                    "with the job file the run used") from None
    raise EvalInputError(
        f"{target}: no {JOB_RECORD} here or in its parent (runs before this version did not "
        "record it). Fix: pass --job with the job file the run used")


@dataclass
class Restored:
    job: Job
    run_dir: Path
    step: int
    params: Any
    model_cfg: Any
    tokenizer: Any
    data_state: dict
    ledger: dict


def restore_run(target: str | Path, *, step: int | None = None,
                job_file: str | Path | None = None) -> Restored:
    """The newest good (or the given) checkpoint of a run, on this process's first device."""
    job, run_dir = find_job(target, job_file)
    import jax

    if job.topology.local and not os.environ.get("JAX_PLATFORMS"):
        # A run of the local fake-TPU cluster: CPU, without libtpu's probing (JAX read the
        # environment when it was imported, so the setting goes through its config).
        jax.config.update("jax_platforms", "cpu")

    from palm_platform.checkpoint import Checkpointer, CheckpointError
    from palm_platform.data.tokenizer import load_tokenizer
    from palm_platform.mesh import make_mesh
    from palm_platform.train.state import state_shardings

    model_cfg = job.model.build()
    try:
        tokenizer = load_tokenizer(job.data.tokenizer)
    except (FileNotFoundError, ValueError) as error:
        raise EvalInputError(f"data.tokenizer of {job.name}: {error}") from None
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise EvalInputError(
            f"tokenizer {job.data.tokenizer} has {tokenizer.vocab_size} pieces but the checkpoint's "
            f"model has vocab_size {model_cfg.vocab_size}. Fix: use the tokenizer the run trained with")
    directory = Path(job.checkpoint.directory)
    if "://" not in job.checkpoint.directory and not directory.is_dir():
        raise EvalInputError(f"{directory}: checkpoint directory not found (from {job.name}'s "
                             "checkpoint.directory). Fix: pass the run folder of a trained job")
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    abstract, _ = state_shardings(model_cfg, job.optimizer.build()[0], mesh)
    # Retention must never delete anything here: keep_last is irrelevant to a reader, but
    # the Checkpointer only deletes on save, which this never calls.
    checkpointer = Checkpointer(job.checkpoint, directory=job.checkpoint.directory)
    try:
        restored = checkpointer.restore(abstract, step=step)
    except CheckpointError as error:
        raise EvalInputError(str(error).splitlines()[0]) from None
    finally:
        checkpointer.close()
    return Restored(job=job, run_dir=run_dir, step=restored.step,
                    params=restored.train_state.params, model_cfg=model_cfg, tokenizer=tokenizer,
                    data_state=restored.data_state, ledger=restored.ledger)
