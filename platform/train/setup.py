"""Everything one JAX process builds before its first step, in one dataclass.

`build_setup(job, run_dir)` makes the mesh, the model's abstract state and shardings, the
optimizer, the data pipeline, the held-out evaluator, the checkpointer, the metrics sink, the
goodput tracker and the MFU figures, once, in this order (the compile cache first: a restart
loads its executables from it). The Trainer (`loop.py`) only trains with what this holds;
recovery (`supervise/recovery.py`) and the hooks (`hooks.py`) read the same object.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from palm.flops import train_flops_per_token
from palm_platform.data.global_array import process_blocks
from palm_platform.job import Job
from palm_platform.job.record import record_job
from palm_platform.mesh import batch_sharding, make_mesh
from palm_platform.metrics.sink import MetricsSink
from palm_platform.pod_count import ElasticShapeError, pods_in_group
from palm_platform.run_dir import RunDir
from palm_platform.supervise.goodput import GoodputTracker
from palm_platform.train.compile_cache import CompileCache
from palm_platform.train.heldout import build_evaluator
from palm_platform.train.mfu import device_peak_flops
from palm_platform.train.optimizer import build_optimizer
from palm_platform.train.state import state_shardings
from palm_platform.train.step import cross_pod_bytes_per_step

logger = logging.getLogger("palm")


@dataclass
class TrainSetup:
    """What the loop, the recovery and the hooks of one process share; built once per run."""

    job: Job
    run_dir: Path
    compile_cache: CompileCache
    process_index: int
    process_count: int
    pods: int  # pods this worker group has (fewer than the job's when elastic)
    mesh: Any
    model_cfg: Any
    tx: Any
    lr: Any
    abstract_state: Any
    shardings: Any
    evaluator: Any
    pipeline: Any
    checkpointer: Any
    sink: MetricsSink
    goodput: GoodputTracker
    flops_per_token: float
    peak_flops: float  # all of this process group's devices
    cross_pod_bytes: int
    check_pods: bool  # compare the pods' parameters after every step
    tiers: Any = None  # checkpoint/tiered.py: the persistent checkpointer + the RAM tier

    @property
    def goodput_path(self) -> Path:
        return RunDir(self.run_dir).goodput

    def cache_counts(self) -> dict:
        counts = self.compile_cache.counts()
        return {"cache_hits": counts["hits"], "cache_misses": counts["misses"]}


def build_setup(job: Job, run_dir: Path, *, launched_at: float | None = None,
                devices: list | None = None) -> TrainSetup:
    """The process's set-up for `job`, writing into `run_dir` (created here)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Before anything compiles: a restart or rerun loads the executables from here.
    compile_cache = CompileCache.enable(job.train.compile_cache or RunDir(run_dir).compile_cache)
    process_index = jax.process_index()
    devices = list(jax.devices() if devices is None else devices)
    pods = _pods(job, devices)
    mesh = make_mesh(pods, job.data_parallel, job.mesh.model, devices)
    model_cfg = job.model.build()
    tx, lr = build_optimizer(job.optimizer)
    abstract_state, shardings = state_shardings(model_cfg, tx, mesh)
    evaluator = build_evaluator(job, run_dir, mesh, model_cfg, shardings.params)
    pipeline = _pipeline(job, model_cfg, evaluator.training_sources)
    pipeline.read_blocks(*process_blocks(batch_sharding(mesh)))  # this host's rows
    checkpointer = _checkpointer(job)
    setup = TrainSetup(
        job=job, run_dir=run_dir, compile_cache=compile_cache, process_index=process_index,
        process_count=jax.process_count(), pods=pods, mesh=mesh, model_cfg=model_cfg, tx=tx,
        lr=lr, abstract_state=abstract_state, shardings=shardings, evaluator=evaluator,
        pipeline=pipeline, checkpointer=checkpointer, sink=_sink(job, run_dir),
        goodput=_goodput(RunDir(run_dir).goodput, launched_at),
        flops_per_token=train_flops_per_token(model_cfg, job.seq_len),
        peak_flops=device_peak_flops() * len(devices),
        cross_pod_bytes=cross_pod_bytes_per_step(abstract_state.params, pods,
                                                 job.mesh.cross_pod_dtype),
        check_pods=job.metrics.check_pods_identical and pods > 1,
        tiers=_tiers(job, checkpointer, abstract_state, mesh, pods, launched_at),
    )
    if process_index == 0:  # `palm generate` / `palm eval` read the job from here
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


def _pipeline(job: Job, model_cfg, training_sources):
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


def _checkpointer(job: Job):
    from palm_platform.checkpoint import Checkpointer

    return Checkpointer(job.checkpoint, directory=job.checkpoint.directory)


def _tiers(job: Job, checkpointer, abstract_state, mesh, pods: int, launched_at: float | None):
    """Both checkpoint tiers on one cadence: the RAM tier with `checkpoint.local`, holding
    this launch's steps only (local_tier.LocalTier)."""
    from palm_platform.checkpoint.tiered import TieredCheckpoints

    return TieredCheckpoints.build(job, checkpointer, abstract_state, mesh, pods,
                                   launch=launched_at)


def _sink(job: Job, run_dir: Path) -> MetricsSink:
    # W&B's import and init (seconds, on every start and restart) run on the sink's own
    # thread: nothing here waits for them.
    return MetricsSink(
        run_dir, job_name=job.name, config=job.model_dump(mode="json"),
        enabled=jax.process_index() == 0, wandb_project=job.metrics.wandb_project,
        wandb_entity=job.metrics.wandb_entity, wandb_mode=job.metrics.wandb_mode,
    )


def _goodput(path: Path, launched_at: float | None) -> GoodputTracker:
    """The run's goodput so far (the run folder's file), else counted from `launched_at`."""
    goodput = GoodputTracker()
    if path.exists():
        try:
            goodput.load_state_dict(json.loads(path.read_text()))
        except (ValueError, RecursionError) as error:  # torn or edited: accounting only,
            from palm_platform.yaml_safe import one_line  # never a reason not to resume

            logger.warning("%s", one_line(f"{path}: unreadable ({error}); "
                                          "goodput counts from this attempt on", 300))
    elif launched_at is not None:  # the time before this process ran (placement, spawn)
        goodput.load_state_dict({"wall_s": 0.0, "productive_s": 0.0, "badput_s": {},
                                 "saved_at_unix": launched_at}, gap_cause="startup")
    return goodput


def startup_spans(marks: dict[str, float]) -> dict[str, float]:
    """Seconds between consecutive start-up marks (imports, init, restore), named by the later."""
    ordered = sorted(marks.items(), key=lambda kv: kv[1])
    return {f"{name}_s": round(t - prev_t, 2)
            for (_, prev_t), (name, t) in zip(ordered, ordered[1:], strict=False)}
