"""The train loop every JAX process runs: restore, then step, log, checkpoint, until done.

The same function runs under Ray (one call per TPU host, `platform/ray/worker.py`) and
directly in one process (`palm run --direct`, tests, benchmarks). Everything that differs
between steps is data: the batch size (PaLM's ramp) and the data position; behaviour is
fixed when the loop starts.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from palm.flops import train_flops_per_token
from palm_platform.data.global_array import to_global_array
from palm_platform.job import Job
from palm_platform.mesh import batch_sharding, make_mesh
from palm_platform.metrics import MetricsSink
from palm_platform.supervise.goodput import GoodputTracker
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.spike import SpikeDetector
from palm_platform.train.consistency import pods_hold_identical_params
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


def broadcast_text(text: str) -> str:
    """Process 0's `text` on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    padded = np.zeros(max(length, 1), np.uint8)
    padded[: len(data)] = data  # only process 0 has data; the others send zeros
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))[:length]).decode()


class TrainingStopped(RuntimeError):
    """The fault policy stopped the run (e.g. spikes kept recurring); the ledger says why."""


@dataclass
class RunSummary:
    steps: int = 0
    tokens: int = 0
    final_loss: float = float("nan")
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)


class Trainer:
    """Owns the mesh, the jitted steps, the pipeline and the checkpointer of one process."""

    def __init__(self, job: Job, run_dir: Path, *, attempt: int = 0, on_step=None,
                 launched_at: float | None = None):
        from palm_platform.checkpoint import Checkpointer
        from palm_platform.data import build_pipeline

        self.job, self.run_dir, self.attempt = job, Path(run_dir), attempt
        self.on_step = on_step or (lambda step: None)
        self.t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
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
        self._compiled: set[int] = set()
        # Supervision: deterministic on every host (all see the same global loss).
        self.detector = SpikeDetector(job.faults.spike)
        self.ledger = Ledger()
        self.ledger_path = self.run_dir / "ledger.json"
        self.goodput = GoodputTracker()
        self.goodput_path = self.run_dir / "goodput.json"
        if self.goodput_path.exists():
            self.goodput.load_state_dict(json.loads(self.goodput_path.read_text()))
        elif launched_at is not None:  # the time before this process ran (placement, spawn)
            self.goodput.load_state_dict({"wall_s": 0.0, "productive_s": 0.0, "badput_s": {},
                                          "saved_at_unix": launched_at}, gap_cause="startup")
        self.check_pods = job.metrics.check_pods_identical and topo.pods > 1

    def step_fn(self, batch_size: int):
        micro = self.job.train.microbatch_sequences
        microbatches = batch_size // micro if micro else 1
        if microbatches not in self._steps:
            spec = StepSpec(self.model_cfg, self.job.topology.pods, microbatches,
                            self.job.mesh.cross_pod_dtype, dropout_seed=self.job.train.seed)
            self._steps[microbatches] = make_train_step(spec, self.tx, self.mesh, self.shardings, self.lr)
        return self._steps[microbatches]

    def restore_or_init(self):
        """The newest good checkpoint, or a fresh start; returns the train state."""
        from palm_platform.checkpoint import CheckpointNotFound

        try:
            restored = self.checkpointer.restore(self.abstract_state)
        except CheckpointNotFound:
            self.sink.event("start", 0, attempt=self.attempt, hosts=self.process_count,
                            devices=jax.device_count(), cross_pod_bytes_per_step=self.cross_pod_bytes)
            if self.job.init_from is None:
                state = init_train_state(self.model_cfg, self.tx, self.mesh, self.job.train.seed)
            else:  # fine-tuning: parameters from another run; a restart resumes from our own
                from palm_platform.train.init_from import load_initial_state

                state, source_step = load_initial_state(self.job, self.abstract_state, self.tx,
                                                        self.shardings)
                self.sink.event("init_from", 0, checkpoint=self.job.init_from.checkpoint,
                                source_step=source_step, load=self.job.init_from.load)
            # Step 0 is saved so that a spike in the first `rollback_steps` can roll back.
            self.checkpointer.save(0, state, self.pipeline.get_state(), self._ledger_item(), force=True)
            return state
        self._load_supervision(restored.ledger, restored.step)
        self.pipeline.set_state(restored.data_state)
        for start, end in self.ledger.skip_ranges():
            self.pipeline.add_skip_range(start, end)
        self.sink.event("checkpoint_restored", restored.step, attempt=self.attempt)
        if self.attempt > 0:
            self.ledger.record_restart(restored.step, cause=f"worker group restart {self.attempt}")
            self.goodput.rollback(to_step=restored.step)
            self.sink.event("restart", restored.step, attempt=self.attempt, alert=True)
        return restored.train_state

    # -- supervision state: saved with every checkpoint, and in the run folder -------------

    def _ledger_item(self) -> dict:
        return {"ledger": self.ledger.to_dict(), "spike_detector": self.detector.state_dict()}

    def _load_supervision(self, item: dict, step: int) -> None:
        self.ledger = Ledger.from_dict((item or {}).get("ledger"))
        # The run folder's ledger also holds rollbacks decided after the last save. Only
        # process 0 writes it (and on TPU pods only host 0 may have it), so host 0's copy is
        # broadcast: every host must apply exactly the same skips.
        local = self.ledger_path.read_text() if self.process_index == 0 and self.ledger_path.exists() else ""
        shared = broadcast_text(local)
        if shared:
            self.ledger = self.ledger.merge(Ledger.from_dict(json.loads(shared)))
        if (item or {}).get("spike_detector"):
            self.detector.load_state_dict(item["spike_detector"])
        self.detector.truncate(step)

    def _save_checkpoint(self, step: int, state, *, force: bool = False) -> None:
        with self.goodput.phase("checkpoint"):
            saved = self.checkpointer.save(step, state, self.pipeline.get_state(),
                                           self._ledger_item(), force=force)
        if saved:
            self.sink.event("checkpoint_saved", step)
            if self.process_index == 0:
                self.goodput_path.write_text(json.dumps(self.goodput.state_dict()))

    def _roll_back(self, spike, data_state: dict, batch_size: int):
        """Every host, in lock-step: restore an older checkpoint and skip the spike's data."""
        from palm_platform.supervise.rollback import plan_rollback

        self.checkpointer.wait_until_finished()  # every host sees the same checkpoint list
        plan = plan_rollback(spike, self.checkpointer.steps(), self.job.faults.spike, self.ledger,
                             data_state=data_state, batch_size=batch_size)
        self.ledger.record_plan(plan)
        if self.process_index == 0:
            self.ledger.save(self.ledger_path)
        self.sink.event("spike", spike.step, alert=True, loss=spike.loss, rule=spike.rule,
                        limit=spike.limit, description=spike.describe())
        if plan.action == "stop":
            self.sink.event("stop", spike.step, alert=True, reason=plan.reason)
            raise TrainingStopped(f"step {spike.step}: {plan.reason}")
        restored = self.checkpointer.restore(self.abstract_state, step=plan.restore_step)
        self.checkpointer.discard_after(plan.restore_step)
        self.pipeline.set_state(restored.data_state)
        for start, end in self.ledger.skip_ranges():
            self.pipeline.add_skip_range(start, end)
        self.detector.truncate(plan.restore_step)
        self.goodput.rollback(to_step=plan.restore_step, from_step=spike.step)
        self.sink.event("rollback", spike.step, alert=True, to_step=plan.restore_step,
                        note=plan.note or "")
        self.sink.event("skip", spike.step, first_sequence=plan.first_sequence,
                        end_sequence=plan.end_sequence, batches=plan.skip_batches)
        return restored.train_state

    def run(self) -> RunSummary:
        from palm_platform.supervise.faults import FaultInjector

        job = self.job
        injector = FaultInjector(job.faults.inject, host_index=self.process_index,
                                 state_dir=self.run_dir / "faults",
                                 batch_size_at=job.train.batch_size_at)
        with self.goodput.phase("startup"):
            state = self.restore_or_init()
        step = int(jax.device_get(state.step))
        summary = RunSummary(extra={"startup_s": time.monotonic() - self.t0, "start_step": step})
        while step < job.train.steps:
            batch_size = job.train.batch_size_at(step)
            injector.maybe_fire(step, checkpoint_dir=job.checkpoint.directory)
            with self.goodput.phase("data"):
                data_state = self.pipeline.get_state()
                local = injector.poison(
                    step, self.pipeline.local_batch(batch_size), data_state=data_state,
                    global_batch_size=batch_size, process_index=self.process_index,
                    process_count=self.process_count, vocab_size=self.pipeline.vocab_size,
                )
                batch = to_global_array(local, batch_sharding(self.mesh))
            compiling = batch_size not in self._compiled  # a new batch shape compiles
            self._compiled.add(batch_size)
            t = time.monotonic()
            with self.goodput.phase("compile" if compiling else "step", step=None if compiling else step):
                state, metrics = self.step_fn(batch_size)(state, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            step_s = time.monotonic() - t
            spike = self.detector.observe(step, metrics["loss"])
            if spike is not None:
                state = self._roll_back(spike, data_state, batch_size)
                step = int(jax.device_get(state.step))
                continue
            step += 1
            metrics.update(
                step_s=step_s, tokens_per_s=metrics["tokens"] / step_s, batch_size=batch_size,
                mfu=metrics["tokens"] / step_s * self.flops_per_token / self.peak_flops,
                compiled=compiling,
            )
            if self.check_pods:
                metrics["pods_identical"] = pods_hold_identical_params(state.params, self.mesh)
            self.sink.log(step, metrics)
            self.on_step(step)
            if self.process_index == 0 and (step % job.metrics.log_every == 0 or step == job.train.steps):
                logger.info("step %d/%d loss %.4f tokens/s %.0f mfu %.2f%%", step, job.train.steps,
                            metrics["loss"], metrics["tokens_per_s"], 100 * metrics["mfu"])
            self._save_checkpoint(step, state)
            summary.final_loss = metrics["loss"]
            summary.tokens += int(metrics["tokens"])
        if step not in self.checkpointer.steps():
            self._save_checkpoint(step, state, force=True)
        with self.goodput.phase("checkpoint"):
            self.checkpointer.wait_until_finished()
        goodput = self.goodput.summary()
        self.sink.event("goodput", step, **{k: v for k, v in goodput.items() if k != "badput_s"},
                        **{f"badput_{k}_s": v for k, v in goodput["badput_s"].items()})
        if self.process_index == 0:
            self.goodput_path.write_text(json.dumps(self.goodput.state_dict()))
            self.ledger.save(self.ledger_path)
        summary.steps = step
        summary.wall_s = time.monotonic() - self.t0
        summary.extra["goodput"] = goodput
        self.final_state = state
        return summary

    def close(self) -> None:
        self.checkpointer.close()
        self.sink.close()
