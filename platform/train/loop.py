"""The train loop every JAX process runs: restore, then get batch, step, hooks, until done.

The same loop runs under Ray (one call per TPU host, `platform/ray/worker.py`) and
directly in one process (`palm run --direct`, tests, benchmarks). Everything that differs
between steps is data: the batch size (PaLM's ramp) and the data position; behaviour is
fixed when the loop starts. What the loop uses is built once by `setup.py`; where it starts
from and the rollback after a spike are `recovery.py`'s; the hooks are `hooks.py`'s.

The host never waits for the device between steps: step k+1 is dispatched (JAX dispatch is
asynchronous) before step k's metrics are read, so metrics, logging and the spike detector
work one step behind, and the next batches are read and placed on a background thread
(`prefetch.py`). A spike found at step k also discards step k+1: the rollback restores an
older checkpoint, so results are bitwise those of a loop that waits every step. Steps a
hook needs the state of (a checkpoint, an eval, the last step) are read at once: a
checkpoint only ever holds steps the spike detector has passed, and the save copies that
step's state off the devices before the next step reuses (donates) its buffers.

    dispatch k+1 | read k: spike? -> _recover (k+1 dropped) | hooks(StepInfo of k)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax

from palm_platform.data.global_array import to_global_array
from palm_platform.hook_protocol import Hook, Preempted, RunSummary, StepInfo, StopTraining
from palm_platform.job import Job
from palm_platform.mesh import batch_sharding
from palm_platform.pod_count import microbatches_at
from palm_platform.run_dir import RunDir
from palm_platform.supervise.restart_account import by_goodput_name
from palm_platform.supervise.spike import Spike
from palm_platform.supervise.supervision import Supervision
from palm_platform.train.consistency import checksums_agree, pod_checksum_array
from palm_platform.train.hooks import build_hooks
from palm_platform.train.prefetch import Batch, Prefetcher
from palm_platform.train.recovery import TrainingStopped, restore_or_init, roll_back
from palm_platform.train.setup import build_setup, startup_spans
from palm_platform.train.step import StepSpec, make_train_step

__all__ = ["RunSummary", "Trainer", "TrainingStopped"]


@dataclass
class _Dispatched:
    """A step whose computation is queued on the devices; its metrics are read later."""

    batch: Batch
    metrics: dict  # device scalars
    checksums: object | None  # per-pod parameter checksums (device), if checked
    compiled: bool
    dispatched_at: float


class Trainer:
    """Trains: batches, steps and hooks over what `build_setup` made for this process.

    `hooks` are added to the job's own (the Ray worker's supervision hook); `attempt` is
    this worker group's start count in this launch (0 first, 1 after a restart, ...).
    """

    def __init__(self, job: Job, run_dir: Path, *, attempt: int = 0, hooks: tuple[Hook, ...] = (),
                 launched_at: float | None = None, startup_marks: dict[str, float] | None = None,
                 devices: list | None = None):
        self.t0 = time.monotonic()
        self.attempt = attempt
        # Unix times of this process's start-up so far (the worker's), reported as spans.
        self.startup_marks = {**(startup_marks or {}), "trainer_init": time.time()}
        self.setup = build_setup(job, Path(run_dir), launched_at=launched_at, devices=devices)
        self.supervision = Supervision.new(job.faults.spike, RunDir(run_dir).ledger,
                                           writes=jax.process_index() == 0)
        self._steps: dict[int, Any] = {}  # jitted step per microbatch count
        self._compiled: set[int] = set()  # batch sizes compiled so far
        self._last_finished_at = time.monotonic()
        self.final_state: Any = None
        self.hooks = [*build_hooks(self.setup, self.supervision, self.step_fn), *hooks]
        if attempt > 0:  # a restarted group: its `restart` record, every second by cause
            from palm_platform.supervise.restart_account import RestartAccountHook

            self.hooks.append(RestartAccountHook(
                self.setup.goodput, self.setup.sink, Path(run_dir), self.supervision,
                self.startup_marks, attempt))
        self.startup_marks["trainer_ready"] = time.time()

    def step_fn(self, batch_size: int):
        # Fewer pods than the job's full size: more microbatches, same global batch.
        job, p = self.setup.job, self.setup.program
        microbatches = microbatches_at(batch_size, job.train.microbatch_sequences,
                                       job.topology.pods, p.pods, job.data_parallel)
        if microbatches not in self._steps:
            spec = StepSpec(p.model_cfg, p.pods, microbatches, job.mesh.cross_pod_dtype,
                            dropout_seed=job.train.seed)
            self._steps[microbatches] = make_train_step(spec, p.tx, p.mesh, p.shardings, p.lr)
        return self._steps[microbatches]

    def run(self) -> RunSummary:
        """Get batch, step, hooks; step k+1 is dispatched before step k is read, except that
        a step a hook needs the state of is read at once."""
        with self.setup.goodput.phase("startup"):
            state = restore_or_init(self.setup, self.supervision, self.attempt)
        step = self._started(state)
        summary = RunSummary(extra={"startup_s": time.monotonic() - self.t0, "start_step": step})
        prefetcher = self._prefetch(step)
        pending: _Dispatched | None = None  # dispatched, not yet read
        try:
            while step < self.setup.job.train.steps:
                with self.setup.goodput.phase("data"):
                    batch = prefetcher.next()
                state, dispatched = self._dispatch(state, batch)
                spike = self._read(pending, summary) if pending is not None else None
                if spike is None:
                    pending, step = dispatched, step + 1
                    wanting = [h for h in self.hooks if h.needs_state and h.due(step)]
                    if wanting:
                        pending = None
                        spike = self._read(dispatched, summary, state, wanting)
                if spike is not None:  # the step after it was dispatched: dropped with it
                    prefetcher.stop()
                    state, step = self._recover(spike, pending or dispatched)
                    pending, prefetcher = None, self._prefetch(step)
        finally:
            prefetcher.stop()
        self._ended(step, state, summary)
        return summary

    def _started(self, state) -> int:
        """After the restore: the start-up event, the hooks' start; the first step."""
        self.startup_marks["restored"] = time.time()
        step = int(jax.device_get(state.step))
        self.setup.sink.event("startup", step, attempt=self.attempt,
                              **startup_spans(self.startup_marks))
        for hook in self.hooks:
            hook.on_start(step)
        self._last_finished_at = time.monotonic()
        return step

    def _ended(self, step: int, state, summary: RunSummary) -> None:
        for hook in self.hooks:
            hook.on_end(step, state, summary)
        self._report(step, summary)
        summary.steps = step
        summary.wall_s = time.monotonic() - self.t0
        self.final_state = state

    def _recover(self, spike: Spike, bad: _Dispatched) -> tuple[Any, int]:
        """The one recovery seam of the loop: a spike at `bad`'s step rolls back."""
        state = roll_back(self.setup, self.supervision, spike, bad.batch.data_state,
                          bad.batch.batch_size)
        self._last_finished_at = time.monotonic()
        return state, int(jax.device_get(state.step))

    def _prefetch(self, first_step: int) -> Prefetcher:
        s = self.setup
        sharding = batch_sharding(s.program.mesh)
        return Prefetcher(s.pipeline, first_step=first_step, last_step=s.job.train.steps,
                          batch_size_at=s.job.train.batch_size_at,
                          place=lambda local: to_global_array(local, sharding))

    def _dispatch(self, state, batch: Batch):
        """Queue one step on the devices; returns the new state without waiting for it."""
        array = batch.array
        for hook in self.hooks:
            array = hook.before_step(batch, array)
        compiling = batch.batch_size not in self._compiled  # a new batch shape compiles
        self._compiled.add(batch.batch_size)
        dispatched_at = time.monotonic()
        s = self.setup
        with s.goodput.phase("compile" if compiling else "step",
                             step=None if compiling else batch.step):
            state, metrics = self.step_fn(batch.batch_size)(state, array)
            checksums = (pod_checksum_array(state.params, s.program.mesh)
                         if s.program.check_pods else None)
        return state, _Dispatched(batch, metrics, checksums, compiling, dispatched_at)

    def _read(self, done: _Dispatched, summary: RunSummary, state=None,
              wanting: list[Hook] | tuple = ()) -> Spike | None:
        """Wait for a dispatched step and check it for a spike (returned); if it passes, the
        hooks see it (`wanting`: the hooks due now that need `state`)."""
        k = done.batch.step
        with self.setup.goodput.phase("compile" if done.compiled else "step",
                                      step=None if done.compiled else k):
            metrics = {name: float(v) for name, v in jax.device_get(done.metrics).items()}
            identical = None if done.checksums is None else checksums_agree(done.checksums)
        finished_at = time.monotonic()
        step_s = finished_at - max(done.dispatched_at, self._last_finished_at)
        self._last_finished_at = finished_at
        spike = self.supervision.detector.observe(k, metrics["loss"])
        if spike is not None:
            return spike
        metrics["step_s"] = step_s
        info = StepInfo(k + 1, MappingProxyType(metrics), done.batch, done.compiled, identical)
        self._call_hooks(info, state, wanting)
        summary.final_loss = metrics["loss"]
        summary.tokens += int(metrics["tokens"])
        return None

    def _call_hooks(self, info: StepInfo, state, wanting: list[Hook] | tuple) -> None:
        """The hooks without state first, then those that wanted the state; a hook that ends
        the run lets the others of its kind see the step first (hook_protocol.py)."""
        stop: StopTraining | None = None
        for hook in self.hooks:
            if not hook.needs_state and hook.due(info.step):
                try:
                    hook.on_step(info)
                except StopTraining as asked:
                    stop = stop or asked
        if stop is not None:
            raise stop
        preempted: Preempted | None = None
        for hook in wanting:
            try:
                hook.on_step(replace(info, state=state))
            except Preempted as notice:
                preempted = preempted or notice
        if preempted is not None:
            raise preempted

    def stopped(self, step: int) -> None:
        """The run stopped at `step` before its last (Ctrl-C on `palm run`): the hooks that
        report on the whole run (goodput) report up to here."""
        for hook in self.hooks:
            hook.on_end(step, None, None)
        self._report(step, None)

    def _report(self, step: int, summary: RunSummary | None) -> None:
        """After every hook's end (the last save's wait, the final eval): the run's goodput and
        badput causes as one event, the goodput file and the ledger in the run folder."""
        goodput, cache = self.setup.goodput.summary(), self.setup.compile_cache.event_fields()
        self.setup.sink.event(
            "goodput", step, **{k: v for k, v in goodput.items() if k != "badput_s"},
            **{f"badput_{k}_s": v for k, v in goodput["badput_s"].items()},
            # the same seconds under ml-goodput-measurement's names
            **{f"by_type_{k}_s": v for k, v in by_goodput_name(goodput["badput_s"]).items()},
            **cache)
        self.setup.goodput.save()
        self.supervision.save_ledger()
        if summary is not None:
            summary.extra["goodput"] = goodput

    def close(self) -> None:
        for hook in self.hooks:
            hook.close()
        self.setup.checkpoints.close()
        self.setup.sink.close()
