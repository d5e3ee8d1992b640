"""The train loop every JAX process runs: restore, then step, log, checkpoint, until done.

The same function runs under Ray (one call per TPU host, `platform/ray/worker.py`) and
directly in one process (`palm run --direct`, tests, benchmarks). Everything that differs
between steps is data: the batch size (PaLM's ramp) and the data position; behaviour is
fixed when the loop starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from palm.flops import train_flops_per_token
from palm_platform.job import Job
from palm_platform.mesh import batch_sharding, make_mesh
from palm_platform.metrics import MetricsSink
from palm_platform.train.optimizer import build_optimizer, learning_rate_schedule
from palm_platform.train.state import init_train_state, state_shardings
from palm_platform.train.step import StepSpec, cross_pod_bytes_per_step, make_train_step

logger = logging.getLogger("palm")

TPU_V4_PEAK_FLOPS = 275e12


def device_peak_flops() -> float:
    """Peak FLOP/s of one device: the datasheet on TPU, a measured matmul on CPU."""
    device = jax.devices()[0]
    if device.platform == "tpu":
        return TPU_V4_PEAK_FLOPS
    n = 1024
    a = jax.device_put(np.ones((n, n), np.float32), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        out = matmul(a)
    out.block_until_ready()
    return 5 * 2 * n**3 / (time.perf_counter() - start)


@dataclass
class RunSummary:
    steps: int = 0
    tokens: int = 0
    final_loss: float = float("nan")
    wall_s: float = 0.0
    step_s: float = 0.0
    extra: dict = field(default_factory=dict)


class Trainer:
    """Owns the mesh, the jitted steps, the pipeline and the checkpointer of one process."""

    def __init__(self, job: Job, run_dir: Path, *, attempt: int = 0, on_step=None):
        from palm_platform.checkpoint import Checkpointer
        from palm_platform.data import build_pipeline

        self.job, self.run_dir, self.attempt = job, Path(run_dir), attempt
        self.on_step = on_step or (lambda step: None)
        self.t0 = time.monotonic()
        topo = job.topology
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        if jax.device_count() != topo.pods * topo.chips_per_pod:
            raise RuntimeError(
                f"job {job.name} needs {topo.pods} x {topo.chips_per_pod} devices, JAX sees "
                f"{jax.device_count()} in {self.process_count} process(es)"
            )
        self.mesh = make_mesh(topo.pods, job.data_parallel, job.mesh.model)
        self.model_cfg = job.model.build()
        self.tx = build_optimizer(job.optimizer)
        self.lr = learning_rate_schedule(job.optimizer)
        self.abstract_state, self.shardings = state_shardings(self.model_cfg, self.tx, self.mesh)
        self._steps: dict[int, object] = {}
        self.pipeline = build_pipeline(
            job.data, seq_len=job.seq_len, base_dir=Path.cwd(),
            process_index=self.process_index, process_count=self.process_count,
        )
        if self.pipeline.vocab_size > self.model_cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {self.pipeline.vocab_size} pieces but model.vocab_size is "
                f"{self.model_cfg.vocab_size}; set model.overrides.vocab_size"
            )
        self.checkpointer = Checkpointer(job.checkpoint, directory=job.checkpoint.directory)
        self.sink = MetricsSink(
            self.run_dir, job_name=job.name, config=job.model_dump(mode="json"),
            enabled=self.process_index == 0, wandb_project=job.metrics.wandb_project,
            wandb_entity=job.metrics.wandb_entity, wandb_mode=job.metrics.wandb_mode,
        )
        self.flops_per_token = train_flops_per_token(self.model_cfg, job.seq_len)
        self.peak_flops = device_peak_flops() * jax.device_count()
        self.cross_pod_bytes = cross_pod_bytes_per_step(
            self.abstract_state.params, topo.pods, job.mesh.cross_pod_dtype)

    def step_fn(self, batch_size: int):
        micro = self.job.train.microbatch_sequences
        microbatches = batch_size // micro if micro else 1
        if microbatches not in self._steps:
            spec = StepSpec(self.model_cfg, self.job.topology.pods, microbatches,
                            self.job.mesh.cross_pod_dtype)
            self._steps[microbatches] = make_train_step(spec, self.tx, self.mesh, self.shardings, self.lr)
        return self._steps[microbatches]

    def restore_or_init(self):
        """(state, ledger dict): the newest good checkpoint, or a fresh start."""
        from palm_platform.checkpoint import CheckpointNotFound

        try:
            restored = self.checkpointer.restore(self.abstract_state)
        except CheckpointNotFound:
            self.sink.event("start", 0, attempt=self.attempt, hosts=self.process_count,
                            devices=jax.device_count(), cross_pod_bytes_per_step=self.cross_pod_bytes)
            return init_train_state(self.model_cfg, self.tx, self.mesh, self.job.train.seed), {}
        self.pipeline.set_state(restored.data_state)
        self.sink.event("checkpoint_restored", restored.step, attempt=self.attempt)
        if self.attempt > 0:
            self.sink.event("restart", restored.step, attempt=self.attempt, alert=True)
        return restored.train_state, restored.ledger

    def run(self) -> RunSummary:
        job = self.job
        state, ledger = self.restore_or_init()
        step = int(jax.device_get(state.step))
        startup_s = time.monotonic() - self.t0
        summary = RunSummary(extra={"startup_s": startup_s, "start_step": step})
        tokens = 0
        while step < job.train.steps:
            batch_size = job.train.batch_size_at(step)
            t = time.monotonic()
            local = self.pipeline.local_batch(batch_size)
            batch = jax.make_array_from_process_local_data(batch_sharding(self.mesh), local)
            state, metrics = self.step_fn(batch_size)(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            step += 1
            step_s = time.monotonic() - t
            tokens += int(metrics["tokens"])
            tokens_per_s = metrics["tokens"] / step_s
            metrics.update(
                step_s=step_s, tokens_per_s=tokens_per_s, batch_size=batch_size,
                mfu=tokens_per_s * self.flops_per_token / self.peak_flops,
            )
            self.sink.log(step, metrics)
            self.on_step(step)
            if self.process_index == 0 and (step % job.metrics.log_every == 0 or step == job.train.steps):
                logger.info("step %d/%d loss %.4f tokens/s %.0f mfu %.2f%%", step, job.train.steps,
                            metrics["loss"], tokens_per_s, 100 * metrics["mfu"])
            if self.checkpointer.save(step, state, self.pipeline.get_state(), ledger):
                self.sink.event("checkpoint_saved", step)
            summary.final_loss = metrics["loss"]
        if step not in self.checkpointer.steps():
            self.checkpointer.save(step, state, self.pipeline.get_state(), ledger, force=True)
            self.sink.event("checkpoint_saved", step)
        self.checkpointer.wait_until_finished()
        summary.steps, summary.tokens = step, tokens
        summary.wall_s = time.monotonic() - self.t0
        self.final_state = state
        return summary

    def close(self) -> None:
        self.checkpointer.close()
        self.sink.close()
