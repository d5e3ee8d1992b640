"""The train loop every JAX process runs: restore, then get batch, step, hooks, until done.

The same function runs under Ray (one call per TPU host, `platform/ray/worker.py`) and
directly in one process (`palm run --direct`, tests, benchmarks). Everything that differs
between steps is data: the batch size (PaLM's ramp) and the data position; behaviour is
fixed when the loop starts.

The host never waits for the device between steps: step k+1 is dispatched (JAX dispatch is
asynchronous) before step k's metrics are read, so metrics, logging and the spike detector
work one step behind, and the next batches are read and placed on a background thread
(`prefetch.py`). A spike found at step k also discards step k+1: the rollback restores an
older checkpoint, so results are bitwise those of a loop that waits every step. Steps that
end on a checkpoint are read at once: a checkpoint only ever holds steps the spike detector
has passed, and the save copies that step's state off the devices before the next step
reuses (donates) its buffers.

    dispatch k+1 | read k: spike? -> roll back (k+1 dropped) | log k | checkpoint if due

The loop itself holds only batches, steps and the spike check with its rollback (which
changes the state and the step, so it cannot be a hook). Metrics, checkpoint cadence,
held-out eval, goodput and fault injection are hooks (`hooks.py`), built once per run.
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
from palm_platform.atomic_write import write_atomic
from palm_platform.data.global_array import to_global_array
from palm_platform.elastic import ElasticShapeError, microbatches_at, pods_in_group
from palm_platform.eval.heldout import build_evaluator
from palm_platform.eval.restore import record_job
from palm_platform.job import Job
from palm_platform.mesh import batch_sharding, make_mesh
from palm_platform.metrics import MetricsSink
from palm_platform.supervise.goodput import GoodputTracker
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.spike import SpikeDetector
from palm_platform.train.compile_cache import CompileCache
from palm_platform.train.consistency import checksums_agree, pod_checksum_array
from palm_platform.train.hooks import build_hooks
from palm_platform.train.prefetch import Batch, Prefetcher
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


def _build_tiers(job: Job, checkpointer, abstract_state, mesh, pods: int):
    """The persistent checkpointer and, with `checkpoint.local`, the RAM tier beside it."""
    from palm_platform.checkpoint.tiered import TieredCheckpoints

    return TieredCheckpoints.build(job, checkpointer, abstract_state, mesh, pods)


class TrainingStopped(RuntimeError):
    """The fault policy stopped the run (e.g. spikes kept recurring); the ledger says why."""


@dataclass
class _Dispatched:
    """A step whose computation is queued on the devices; its metrics are read later."""

    batch: Batch
    metrics: dict  # device scalars
    checksums: object | None  # per-pod parameter checksums (device), if checked
    compiled: bool
    dispatched_at: float
    pods_identical: bool | None = None  # set when read, if checked


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
                 launched_at: float | None = None, startup_marks: dict[str, float] | None = None,
                 devices: list | None = None):
        from palm_platform.checkpoint import Checkpointer
        from palm_platform.data import build_pipeline

        self.job, self.run_dir, self.attempt = job, Path(run_dir), attempt
        self.on_step = on_step or (lambda step: None)
        self.t0 = time.monotonic()
        # Unix times of this process's start-up so far (the worker's), reported as spans.
        self.startup_marks = {**(startup_marks or {}), "trainer_init": time.time()}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Before anything compiles: a restart or rerun loads the executables from here.
        self.compile_cache = CompileCache.enable(job.train.compile_cache or self.run_dir / "compile-cache")
        topo = job.topology
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        devices = list(jax.devices() if devices is None else devices)
        try:  # elastic jobs: the pods this worker group has (whole slices), see elastic.py
            self.pods = pods_in_group(len(devices), topo.chips_per_pod, topo.fewest_pods, topo.pods)
        except ElasticShapeError as error:
            raise RuntimeError(f"job {job.name}: {error}; JAX sees {len(devices)} devices in "
                               f"{self.process_count} process(es)") from None
        self.mesh = make_mesh(self.pods, job.data_parallel, job.mesh.model, devices)
        self.model_cfg = job.model.build()
        self.tx, self.lr = job.optimizer.build()
        self.abstract_state, self.shardings = state_shardings(self.model_cfg, self.tx, self.mesh)
        self._steps: dict[int, object] = {}
        self.evaluator = build_evaluator(job, self.run_dir, self.mesh, self.model_cfg,
                                         self.shardings.params)
        self.pipeline = build_pipeline(
            job.data, seq_len=job.seq_len, base_dir=Path.cwd(),
            process_index=self.process_index, process_count=self.process_count,
            source_filter=self.evaluator.training_sources,
        )
        if self.pipeline.vocab_size > self.model_cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {self.pipeline.vocab_size} pieces but model.vocab_size is "
                f"{self.model_cfg.vocab_size}; set model.overrides.vocab_size"
            )
        self.checkpointer = Checkpointer(job.checkpoint, directory=job.checkpoint.directory)
        self.tiers = _build_tiers(job, self.checkpointer, self.abstract_state, self.mesh, self.pods)
        # W&B's import and init (seconds, on every start and restart) run on the sink's own
        # thread: nothing here waits for them.
        self.sink = MetricsSink(
            self.run_dir, job_name=job.name, config=job.model_dump(mode="json"),
            enabled=self.process_index == 0, wandb_project=job.metrics.wandb_project,
            wandb_entity=job.metrics.wandb_entity, wandb_mode=job.metrics.wandb_mode,
        )
        self.flops_per_token = train_flops_per_token(self.model_cfg, job.seq_len)
        self.peak_flops = device_peak_flops() * len(devices)
        self.cross_pod_bytes = cross_pod_bytes_per_step(
            self.abstract_state.params, self.pods, job.mesh.cross_pod_dtype)
        self._compiled: set[int] = set()
        # Supervision: deterministic on every host (all see the same global loss).
        self.detector = SpikeDetector(job.faults.spike)
        self.ledger = Ledger()
        self.ledger_path = self.run_dir / "ledger.json"
        self.goodput = GoodputTracker()
        self.goodput_path = self.run_dir / "goodput.json"
        if self.goodput_path.exists():
            try:
                self.goodput.load_state_dict(json.loads(self.goodput_path.read_text()))
            except (ValueError, RecursionError) as error:  # torn or edited: accounting only,
                from palm_platform.yaml_safe import one_line  # never a reason not to resume

                logger.warning("%s", one_line(f"{self.goodput_path}: unreadable ({error}); "
                                           "goodput counts from this attempt on", 300))
        elif launched_at is not None:  # the time before this process ran (placement, spawn)
            self.goodput.load_state_dict({"wall_s": 0.0, "productive_s": 0.0, "badput_s": {},
                                          "saved_at_unix": launched_at}, gap_cause="startup")
        self.check_pods = job.metrics.check_pods_identical and self.pods > 1
        if self.process_index == 0:  # `palm generate` / `palm eval` read the job from here
            record_job(self.run_dir, job)
        self.startup_marks["trainer_ready"] = time.time()

    def step_fn(self, batch_size: int):
        # Fewer pods than the job's full size: more microbatches, same global batch.
        microbatches = microbatches_at(batch_size, self.job.train.microbatch_sequences,
                                       self.job.topology.pods, self.pods, self.job.data_parallel)
        if microbatches not in self._steps:
            spec = StepSpec(self.model_cfg, self.pods, microbatches,
                            self.job.mesh.cross_pod_dtype, dropout_seed=self.job.train.seed)
            self._steps[microbatches] = make_train_step(spec, self.tx, self.mesh, self.shardings, self.lr)
        return self._steps[microbatches]

    def restore_or_init(self):
        """The newest good checkpoint, or a fresh start; returns the train state."""
        from palm_platform.checkpoint import CheckpointNotFound

        try:
            restored = self.tiers.restore(self.abstract_state)
        except CheckpointNotFound:
            self.sink.event("start", 0, attempt=self.attempt, hosts=self.process_count, pods=self.pods,
                            devices=self.mesh.size, cross_pod_bytes_per_step=self.cross_pod_bytes)
            if self.job.init_from is None:
                state = init_train_state(self.model_cfg, self.tx, self.mesh, self.job.train.seed,
                                         self.shardings)
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
        self._note_resize(restored.ledger, restored.step)
        self.pipeline.set_state(restored.data_state)
        for start, end in self.ledger.skip_ranges():
            self.pipeline.add_skip_range(start, end)
        self.sink.event("checkpoint_restored", restored.step, attempt=self.attempt,
                        **restored.record())
        if self.attempt == 0:  # a new launch of the same job (e.g. after Ctrl-C): a resume
            self.sink.event("resume", restored.step)
        if self.attempt > 0:
            self.ledger.record_restart(restored.step, cause=f"worker group restart {self.attempt}")
            # The `restart` record follows at the first finished step, with every second of
            # the restart by cause (supervise/restart_account.py).
            self.rolled_back_s = self.goodput.rollback(to_step=restored.step)
        return restored.train_state

    # -- supervision state: saved with every checkpoint, and in the run folder -------------

    def _ledger_item(self) -> dict:
        return {"ledger": self.ledger.to_dict(), "spike_detector": self.detector.state_dict(),
                "pods": self.pods}

    def _note_resize(self, item: dict, step: int) -> None:
        """A restore onto another pod count than the checkpoint's: a `resize` event.

        Decided from the checkpoint (saved with the pod count that wrote it), so every host
        records the same event and two runs with the same resizes keep equal ledgers.
        """
        before = (item or {}).get("pods", self.job.topology.pods)
        if before == self.pods:
            return
        cause = "pod lost" if self.pods < before else "pod returned"
        self.ledger.record_resize(step, from_pods=before, to_pods=self.pods, cause=cause)
        self.sink.event("resize", step, alert=True, from_pods=before, to_pods=self.pods, cause=cause)
        if self.process_index == 0:  # the event above is also its log line
            self.ledger.save(self.ledger_path)

    def _load_supervision(self, item: dict, step: int) -> None:
        self.ledger = Ledger.from_dict((item or {}).get("ledger"))
        # The run folder's ledger also holds rollbacks decided after the last save. Only
        # process 0 writes it (and on TPU pods only host 0 may have it), so host 0's copy is
        # broadcast: every host must apply exactly the same skips.
        local = self.ledger_path.read_text() if self.process_index == 0 and self.ledger_path.exists() else ""
        shared = broadcast_text(local)
        if shared:
            try:
                run_ledger = Ledger.from_dict(json.loads(shared))
            except (ValueError, RecursionError) as error:  # it steers the skips: refuse it
                from palm_platform.yaml_safe import one_line

                raise ValueError(one_line(
                    f"{self.ledger_path}: unreadable ledger ({error}). Fix: delete it (the "
                    "checkpoint's own ledger is used) or restore it from a backup", 400)) from None
            self.ledger = self.ledger.merge(run_ledger)
        if (item or {}).get("spike_detector"):
            self.detector.load_state_dict(item["spike_detector"])
        self.detector.truncate(step)

    def save_checkpoint(self, step: int, state, data_state: dict, *, force: bool = False) -> None:
        start = time.monotonic()
        with self.goodput.phase("checkpoint"):
            saved = self.checkpointer.save(step, state, data_state, self._ledger_item(), force=force)
        if saved:  # blocked_s: how long the loop waited (the on-device copy of the state)
            self.sink.event("checkpoint_saved", step, blocked_s=round(time.monotonic() - start, 3))
            if self.process_index == 0:
                write_atomic(self.goodput_path, json.dumps(self.goodput.state_dict()))

    def save_local(self, step: int, state, data_state: dict) -> None:
        """The RAM tier's save; `blocked_s` is what the step waited (on-device copies)."""
        start = time.monotonic()
        with self.goodput.phase("checkpoint"):
            self.tiers.save_local(step, state, data_state, self._ledger_item())
        self.sink.event("checkpoint_saved", step, tier="local",
                        blocked_s=round(time.monotonic() - start, 4))

    def _roll_back(self, spike, data_state: dict, batch_size: int):
        """Every host, in lock-step: restore an older checkpoint and skip the spike's data."""
        from palm_platform.supervise.rollback import plan_rollback

        self.checkpointer.wait_until_finished()  # every host sees the same checkpoint list
        plan = plan_rollback(spike, self.checkpointer.steps(), self.job.faults.spike, self.ledger,
                             data_state=data_state, batch_size=batch_size)
        plan.record(self.ledger)
        if self.process_index == 0:
            self.ledger.save(self.ledger_path)
        self.sink.event("spike", spike.step, alert=True, loss=spike.loss, rule=spike.rule,
                        limit=spike.limit, description=spike.describe())
        if plan.action == "stop":
            self.sink.event("stop", spike.step, alert=True, reason=plan.reason)
            raise TrainingStopped(f"step {spike.step}: {plan.reason}")
        restored = self.checkpointer.restore(self.abstract_state, step=plan.restore_step)
        self.tiers.discard_after(plan.restore_step)
        self.pipeline.set_state(restored.data_state)
        for start, end in self.ledger.skip_ranges():
            self.pipeline.add_skip_range(start, end)
        self.detector.truncate(plan.restore_step)
        # Every step from the restore point on runs again (the one dispatched after the
        # spike included).
        self.goodput.rollback(to_step=plan.restore_step)
        self.sink.event("rollback", spike.step, alert=True, to_step=plan.restore_step,
                        note=plan.note or "")
        self.sink.event("skip", spike.step, first_sequence=plan.first_sequence,
                        end_sequence=plan.end_sequence, batches=plan.skip_batches)
        return restored.train_state

    def _prefetch(self, first_step: int) -> Prefetcher:
        sharding = batch_sharding(self.mesh)
        return Prefetcher(self.pipeline, first_step=first_step, last_step=self.job.train.steps,
                          batch_size_at=self.job.train.batch_size_at,
                          place=lambda local: to_global_array(local, sharding))

    def _dispatch(self, state, batch: Batch):
        """Queue one step on the devices; returns the new state without waiting for it."""
        array = batch.array
        for hook in self.hooks:
            array = hook.before_step(batch, array)
        compiling = batch.batch_size not in self._compiled  # a new batch shape compiles
        self._compiled.add(batch.batch_size)
        dispatched_at = time.monotonic()
        with self.goodput.phase("compile" if compiling else "step", step=None if compiling else batch.step):
            state, metrics = self.step_fn(batch.batch_size)(state, array)
            checksums = pod_checksum_array(state.params, self.mesh) if self.check_pods else None
        return state, _Dispatched(batch, metrics, checksums, compiling, dispatched_at)

    def _read(self, done: _Dispatched, summary: RunSummary):
        """Wait for a dispatched step and check it for a spike (returned); if it passes, the
        hooks see its metrics."""
        k = done.batch.step
        with self.goodput.phase("compile" if done.compiled else "step", step=None if done.compiled else k):
            metrics = {name: float(v) for name, v in jax.device_get(done.metrics).items()}
            if done.checksums is not None:
                done.pods_identical = checksums_agree(done.checksums)
        finished_at = time.monotonic()
        step_s = finished_at - max(done.dispatched_at, self._last_finished_at)
        self._last_finished_at = finished_at
        spike = self.detector.observe(k, metrics["loss"])
        if spike is not None:
            return spike
        metrics["step_s"] = step_s
        for hook in self.hooks:
            hook.after_step(k + 1, metrics, done)
        summary.final_loss = metrics["loss"]
        summary.tokens += int(metrics["tokens"])
        return None

    def _report_startup(self, step: int) -> None:
        """One event: seconds between consecutive start-up marks (imports, init, restore)."""
        marks = sorted(self.startup_marks.items(), key=lambda kv: kv[1])
        spans = {f"{name}_s": round(t - prev_t, 2)
                 for (_, prev_t), (name, t) in zip(marks, marks[1:], strict=False)}
        self.sink.event("startup", step, attempt=self.attempt, **spans)

    def cache_counts(self) -> dict:
        counts = self.compile_cache.counts()
        return {"cache_hits": counts["hits"], "cache_misses": counts["misses"]}

    def run(self) -> RunSummary:
        """Get batch, step, hooks; step k+1 is dispatched before step k is read, except that
        a step a hook needs the state of (checkpoint, eval, the last) is read at once."""
        self.hooks = build_hooks(self)
        with self.goodput.phase("startup"):
            state = self.restore_or_init()
        self.startup_marks["restored"] = time.time()
        step = int(jax.device_get(state.step))
        self._report_startup(step)
        for hook in self.hooks:
            hook.on_start(step)
        summary = RunSummary(extra={"startup_s": time.monotonic() - self.t0, "start_step": step})
        self._last_finished_at = time.monotonic()
        prefetcher = self._prefetch(step)
        pending: _Dispatched | None = None  # dispatched, not yet read
        try:
            while step < self.job.train.steps:
                with self.goodput.phase("data"):
                    batch = prefetcher.next()
                state, dispatched = self._dispatch(state, batch)
                spike = self._read(pending, summary) if pending is not None else None
                if spike is None:
                    pending, step = dispatched, step + 1
                    if any(hook.needs_state(step) for hook in self.hooks):
                        pending = None
                        spike = self._read(dispatched, summary)
                        if spike is None:
                            for hook in self.hooks:
                                hook.with_state(step, state, batch)
                            continue
                if spike is not None:  # the step after it was dispatched: dropped with it
                    prefetcher.stop()
                    bad = pending if pending is not None and pending.batch.step == spike.step else dispatched
                    state = self._roll_back(spike, bad.batch.data_state, bad.batch.batch_size)
                    step = int(jax.device_get(state.step))
                    pending = None
                    self._last_finished_at = time.monotonic()
                    prefetcher = self._prefetch(step)
        finally:
            prefetcher.stop()
        for hook in self.hooks:
            hook.on_end(step, state, summary)
        summary.steps = step
        summary.wall_s = time.monotonic() - self.t0
        self.final_state = state
        return summary

    def stopped(self, step: int) -> None:
        """The run stopped at `step` before its last (Ctrl-C on `palm run`): the hooks that
        report on the whole run (goodput) report up to here."""
        for hook in self.hooks:
            hook.on_stop(step)

    def close(self) -> None:
        for hook in getattr(self, "hooks", []):  # set by run()
            hook.close()
        self.tiers.close()
        self.sink.close()
