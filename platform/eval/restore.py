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

from palm_platform.job import Job, JobError, load_job
from palm_platform.run_dir import RunDir

log = logging.getLogger(__name__)

JOB_RECORD = RunDir(Path()).job_record.name


class EvalInputError(ValueError):
    """Bad input to `palm generate` / `palm eval`: one line that names the thing and the fix."""


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
        record = RunDir(folder).job_record
        if record.is_file():
            return read_job_record(record), folder
    raise EvalInputError(
        f"{target}: no {JOB_RECORD} here or in its parent (runs before this version did not "
        "record it). Fix: pass --job with the job file the run used")


MAX_RECORD_BYTES = 1 << 20  # a recorded job is a few KB; bound what a hostile one costs


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen.add(key)
    return dict(pairs)


def read_job_record(record: Path) -> Job:
    """A run folder's job.json, read as defensively as a job file (platform/yaml_safe.py):
    bounded size, no duplicate keys, no RecursionError, and one line naming the field."""
    from palm_platform.job import parse_job
    from palm_platform.yaml_safe import one_line

    fix = "Fix: pass --job with the job file the run used"
    size = record.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise EvalInputError(f"{record}: {size:,} bytes, more than a job record's "
                             f"{MAX_RECORD_BYTES:,}. {fix}")
    try:
        raw = json.loads(record.read_bytes().decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, duplicates, `[[[[...`
        raise EvalInputError(
            one_line(f"{record}: not a job record ({error}). {fix}", 400)
        ) from None
    try:
        return parse_job(raw, record)
    except JobError as error:
        lines = str(error).splitlines()  # a header, then one line per field
        detail = lines[1].strip() if len(lines) > 1 else lines[0].removeprefix(f"{record}: ")
        detail = detail.split(". Fix:")[0]
        raise EvalInputError(one_line(f"{record}: not a valid job record ({detail}). {fix}",
                                      400)) from None


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
    placement: Any = None  # eval.placement.Placement: one process, or the job's mesh


def restore_run(target: str | Path, *, step: int | None = None,
                job_file: str | Path | None = None, sharded: bool = False) -> Restored:
    """The newest good (or the given) checkpoint of a run: on this process's first device,
    or (`sharded`, every host of a Ray eval job) sharded over the job's mesh as in training."""
    check_run_storage(target, job_file)
    job, run_dir = find_job(target, job_file)
    check_run_storage(target, job_file, job)
    return restore_job(job, run_dir, step=step, sharded=sharded)


def check_run_storage(target: str | Path, job_file: str | Path | None, job: Job | None = None
                      ) -> None:
    """The gs:// pre-flight (storage/preflight.py) for `palm generate` / `palm eval`: on the
    target and --job given, then on the job's checkpoint, tokenizer and data paths."""
    from palm_platform.storage.preflight import StorageConfigError, check_gcs_paths, gcs_paths

    paths = {"target": str(target)}
    if job_file is not None:
        paths["--job"] = str(job_file)
    if job is not None:
        paths = {k: v for k, v in gcs_paths(job).items() if k != "run_dir"}
    try:
        check_gcs_paths(paths)
    except StorageConfigError as error:
        raise EvalInputError(str(error)) from None
    if job is None and job_file is None and str(target).startswith("gs://"):
        raise EvalInputError(
            f"{target}: a run folder is local (it holds job.json and metrics.jsonl; only "
            "checkpoints and data go to gs://). Fix: pass the run folder, or the gs:// "
            "checkpoint directory with --job FILE")


def restore_job(
    job: Job, run_dir: Path, *, step: int | None = None, sharded: bool = False
) -> Restored:
    import jax

    if job.topology.local and not os.environ.get("JAX_PLATFORMS"):
        # A run of the local fake-TPU cluster: CPU, without libtpu's probing (JAX read the
        # environment when it was imported, so the setting goes through its config).
        jax.config.update("jax_platforms", "cpu")

    from palm_platform.checkpoint import Checkpointer, CheckpointError
    from palm_platform.data.tokenizer import load_tokenizer
    from palm_platform.eval.placement import Placement
    from palm_platform.mesh import make_mesh
    from palm_platform.train.optimizer import build_optimizer
    from palm_platform.train.state import state_shardings

    model_cfg = job.model.build()
    try:
        tokenizer = load_tokenizer(job.data.tokenizer)
    except (FileNotFoundError, ValueError) as error:
        raise EvalInputError(f"data.tokenizer of {job.name}: {error}") from None
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise EvalInputError(
            f"tokenizer {job.data.tokenizer} has {tokenizer.vocab_size} pieces but the "
            f"checkpoint's model has vocab_size {model_cfg.vocab_size}. Fix: use the tokenizer "
            "the run trained with"
        )
    directory = Path(job.checkpoint.directory)
    if "://" not in job.checkpoint.directory and not directory.is_dir():
        raise EvalInputError(f"{directory}: checkpoint directory not found (from {job.name}'s "
                             "checkpoint.directory). Fix: pass the run folder of a trained job")
    if sharded:
        mesh = make_mesh(job.topology.pods, job.data_parallel, job.mesh.model)
    else:
        mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    abstract, _ = state_shardings(model_cfg, build_optimizer(job.optimizer)[0], mesh)
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
                    data_state=restored.data_state, ledger=restored.ledger,
                    placement=Placement(mesh if sharded else None))
