"""What one JAX process builds before its first step: `build_setup(job, run_dir)`.

The compile cache first (a restart loads its executables from it), then the model, its
optimizer and the state's layout on this worker group's mesh (`TrainProgram`), the data
pipeline, the held-out evaluator, the checkpoints (both tiers), the metrics sink and the
goodput tracker, once. The Trainer (`loop.py`), the recovery (`recovery.py`) and `build_hooks`
(`hooks.py`) read it; each hook is given only the few objects it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import optax
from jax.sharding import Mesh

from palm.config import ModelConfig
from palm_platform.checkpoint.checkpoints import Checkpoints
from palm_platform.data.global_array import process_blocks
from palm_platform.job import Job
from palm_platform.job.record import record_job
from palm_platform.mesh import batch_sharding, make_mesh
from palm_platform.metrics.goodput import GoodputTracker
from palm_platform.metrics.sink import MetricsSink
from palm_platform.pod_count import ElasticShapeError, pods_in_group
from palm_platform.run_dir import RunDir
from palm_platform.train.compile_cache import CompileCache
from palm_platform.train.heldout import HeldOutEvaluator, NoEval, build_evaluator
from palm_platform.train.optimizer import build_optimizer
from palm_platform.train.state import TrainState, state_shardings

if TYPE_CHECKING:
    from palm_platform.data.pipeline import Pipeline


@dataclass(frozen=True)
class TrainProgram:
    """What the step is compiled from: the model, its optimizer, and the train state's shapes
    and shardings on this worker group's mesh."""

    model_cfg: ModelConfig
    tx: optax.GradientTransformation
    lr: optax.Schedule
    mesh: Mesh
    pods: int  # pods this worker group has (fewer than the job's when elastic)
    abstract_state: TrainState  # leaves are ShapeDtypeStructs carrying their shardings
    shardings: TrainState  # a NamedSharding per leaf
    check_pods: bool  # compare the pods' parameters after every step


@dataclass(frozen=True)
class TrainSetup:
    """What the loop and the recovery of one process share; built once per run."""

    job: Job
    run_dir: Path
    program: TrainProgram
    pipeline: Pipeline
    evaluator: HeldOutEvaluator | NoEval
    checkpoints: Checkpoints
    sink: MetricsSink
    goodput: GoodputTracker
    compile_cache: CompileCache


def build_setup(job: Job, run_dir: Path, *, launched_at: float | None = None,
                devices: list | None = None) -> TrainSetup:
    """The process's set-up for `job`, writing into `run_dir` (created here)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Before anything compiles: a restart or rerun loads the executables from here.
    compile_cache = CompileCache.enable(job.train.compile_cache or RunDir(run_dir).compile_cache)
    devices = list(jax.devices() if devices is None else devices)
    pods = _pods(job, devices)
    mesh = make_mesh(pods, job.data_parallel, job.mesh.model, devices)
    model_cfg = job.model.build()
    tx, lr = build_optimizer(job.optimizer)
    abstract_state, shardings = state_shardings(model_cfg, tx, mesh)
    program = TrainProgram(model_cfg, tx, lr, mesh, pods, abstract_state, shardings,
                           check_pods=job.metrics.check_pods_identical and pods > 1)
    evaluator = build_evaluator(job, run_dir, mesh, model_cfg, shardings.params)
    pipeline = _pipeline(job, model_cfg, evaluator.training_sources)
    pipeline.read_blocks(*process_blocks(batch_sharding(mesh)))  # this host's rows
    writes = jax.process_index() == 0  # the run folder's files: one writer
    setup = TrainSetup(
        job=job, run_dir=run_dir, program=program, pipeline=pipeline, evaluator=evaluator,
        checkpoints=Checkpoints.build(job.checkpoint, job_name=job.name,
                                      last_step=job.train.steps, abstract_state=abstract_state,
                                      mesh=mesh, pods=pods, launch=launched_at),
        sink=_sink(job, run_dir),
        goodput=GoodputTracker.resume(RunDir(run_dir).goodput, launched_at=launched_at,
                                      writes=writes),
        compile_cache=compile_cache,
    )
    if writes:  # `palm generate` / `palm eval` read the job from here
        record_job(run_dir, job)
    return setup


def _pods(job: Job, devices: list) -> int:
    """Elastic jobs: the pods this worker group has (whole slices), see elastic.py."""
    topo = job.topology
    try:
        return pods_in_group(len(devices), topo.chips_per_pod, topo.fewest_pods, topo.pods)
    except ElasticShapeError as error:
        raise RuntimeError(f"job {job.name}: {error}; JAX sees {len(devices)} devices in "
                           f"{jax.process_count()} process(es)") from None


def _pipeline(job: Job, model_cfg: ModelConfig, training_sources) -> Pipeline:
    from palm_platform.data import build_pipeline

    pipeline = build_pipeline(
        job.data, seq_len=job.seq_len, base_dir=Path.cwd(),
        process_index=jax.process_index(), process_count=jax.process_count(),
        source_filter=training_sources,
    )
    if pipeline.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {pipeline.vocab_size} pieces but model.vocab_size is "
            f"{model_cfg.vocab_size}; set model.overrides.vocab_size"
        )
    return pipeline


def _sink(job: Job, run_dir: Path) -> MetricsSink:
    # W&B's import and init (seconds, on every start and restart) run on the sink's own
    # thread: nothing here waits for them.
    return MetricsSink(
        run_dir, job_name=job.name, config=job.model_dump(mode="json"),
        enabled=jax.process_index() == 0, wandb_project=job.metrics.wandb_project,
        wandb_entity=job.metrics.wandb_entity, wandb_mode=job.metrics.wandb_mode,
    )


def startup_spans(marks: dict[str, float]) -> dict[str, float]:
    """Seconds between consecutive start-up marks (imports, init, restore), named by the later."""
    ordered = sorted(marks.items(), key=lambda kv: kv[1])
    return {f"{name}_s": round(t - prev_t, 2)
            for (_, prev_t), (name, t) in zip(ordered, ordered[1:], strict=False)}
