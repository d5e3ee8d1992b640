"""What the train loop does around each step, as hooks built once from the job.

The loop (`loop.py`) is "get batch, step, hooks"; everything that is not the step itself is
a hook (the contract: `palm_platform/hook_protocol.py`), and a job gets only the hooks it asks
for (fault injection only when `faults.inject` lists faults, held-out eval only with an
`eval:` section). Each hook is built from the few objects it uses, never from the whole set-up
or the Trainer, and none holds another hook. A component keeps its own cadence (the
checkpoints decide when each tier is due, the evaluator when it runs); the hook only asks. The
worker adds its supervision hook (watchdog, liveness, stop check: `supervise/heartbeat.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from palm.flops import train_flops_per_token
from palm_platform.checkpoint.checkpoints import LOCAL, PERSISTENT, Checkpoints, Due
from palm_platform.data.global_array import to_global_array
from palm_platform.hook_protocol import Hook, Preempted, RunSummary, StepInfo
from palm_platform.mesh import batch_sharding
from palm_platform.metrics.goodput import GoodputTracker
from palm_platform.metrics.sink import MetricsSink
from palm_platform.profile.capture import ProfileHook
from palm_platform.run_dir import RunDir
from palm_platform.supervise.supervision import Supervision
from palm_platform.train.compile_cache import CompileCache
from palm_platform.train.mfu import device_peak_flops, mfu
from palm_platform.train.setup import TrainSetup

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from palm_platform.data.pipeline import Pipeline
    from palm_platform.job.train import TrainConfig
    from palm_platform.supervise.faults import FaultInjector
    from palm_platform.train.heldout import HeldOutEvaluator
    from palm_platform.train.state import TrainState

logger = logging.getLogger("palm")


class FaultInjectionHook(Hook):
    """`faults.inject`: kill, hang or damage before a step; poison a batch's tokens."""

    every = 0  # acts before steps only

    def __init__(self, injector: FaultInjector, checkpoints: Checkpoints, checkpoint_dir: str,
                 pipeline: Pipeline, mesh: Mesh):
        self.injector, self.checkpoints, self.checkpoint_dir = injector, checkpoints, checkpoint_dir
        self.pipeline, self.mesh = pipeline, mesh

    def before_step(self, batch: Any, array: Any) -> Any:
        step = batch.step
        if self.injector.damage_due(step):
            self.checkpoints.wait_until_finished()  # damage the newest checkpoint
        self.injector.maybe_fire(step, checkpoint_dir=self.checkpoint_dir)
        local = self.injector.poison(
            step, batch.local, data_state=batch.data_state, global_batch_size=batch.batch_size,
            rows=self.pipeline.local_rows(batch.batch_size), vocab_size=self.pipeline.vocab_size,
        )
        return array if local is batch.local else to_global_array(local, batch_sharding(self.mesh))


class MetricsHook(Hook):
    """Each read step: throughput and MFU, the JSONL/W&B record, the progress line."""

    def __init__(self, sink: MetricsSink, compile_cache: CompileCache, *,
                 flops_per_token: float, peak_flops: float, pods: int | None, log_every: int,
                 last_step: int):
        """`peak_flops`: all of this process group's devices; `pods`: each step says its pod
        count (elastic jobs), None: it does not."""
        self.sink, self.compile_cache = sink, compile_cache
        self.flops_per_token, self.peak_flops, self.pods = flops_per_token, peak_flops, pods
        self.log_every, self.last_step = log_every, last_step
        self.logs = jax.process_index() == 0

    def on_step(self, info: StepInfo) -> None:
        step = info.step
        record = dict(info.metrics)
        step_s = record["step_s"]
        if self.pods is not None:
            record["pods"] = self.pods
        tokens_per_s = record["tokens"] / step_s
        record.update(
            tokens_per_s=tokens_per_s, batch_size=info.batch.batch_size,
            mfu=mfu(tokens_per_s, self.flops_per_token, self.peak_flops), compiled=info.compiled,
        )
        if info.pods_identical is not None:
            record["pods_identical"] = info.pods_identical
        self.sink.log(step, record)
        if info.compiled:
            self.sink.event("compiled", step, batch_size=info.batch.batch_size,
                            seconds=round(step_s, 1), **self.compile_cache.event_fields())
        if self.logs and (step % self.log_every == 0 or step == self.last_step):
            logger.info("step %d/%d loss %.4f tokens/s %.0f mfu %.2f%%", step, self.last_step,
                        record["loss"], record["tokens_per_s"], 100 * record["mfu"])


class ElasticHook(Hook):
    """`topology.min_pods`: on fewer pods than the job's, the missing pods' share of each
    step's time is badput "degraded" (platform/pod_count.py)."""

    def __init__(self, goodput: GoodputTracker, *, pods: int, job_pods: int):
        self.goodput, self.missing = goodput, 1 - pods / job_pods

    def on_step(self, info: StepInfo) -> None:
        if self.missing > 0:
            self.goodput.reclassify(info.step - 1, self.missing, cause="degraded")


class CheckpointHook(Hook):
    """Saves what the checkpoints say is due (asked once per step: `due` keeps the answer),
    reports each save, and at a preemption notice's agreed step ends the run (`Preempted`)
    once every host's save is committed; at the end waits for the last save and gives the RAM
    tier back."""

    needs_state = True

    def __init__(self, checkpoints: Checkpoints, supervision: Supervision, *, pods: int,
                 goodput: GoodputTracker, sink: MetricsSink):
        self.checkpoints, self.supervision, self.pods = checkpoints, supervision, pods
        self.goodput, self.sink = goodput, sink
        self._due = Due()

    def due(self, step: int) -> bool:
        self._due = self.checkpoints.due(step)
        return bool(self._due)

    def on_step(self, info: StepInfo) -> None:
        step, due = info.step, self._due
        with self.goodput.phase("checkpoint"):
            waited = self.checkpoints.save(step, due, info.state, info.batch.data_state_after,
                                           self.supervision.checkpoint_item(
                                               self.pods, agreed=due.preempted))
        # blocked_s: how long the loop waited (the on-device copies of the state)
        if LOCAL in waited:
            self.sink.event("checkpoint_saved", step, tier="local",
                            blocked_s=round(waited[LOCAL], 4))
        if PERSISTENT in waited:
            self.sink.event("checkpoint_saved", step, blocked_s=round(waited[PERSISTENT], 3))
        self.goodput.save()  # a restart charges the time since this save to "restart"
        if due.preempted:
            self.sink.event("preempt", step, alert=True,
                            mechanism=self.checkpoints.notice.mechanism)
            raise Preempted(step)

    def on_end(self, step: int, state: Any, summary: RunSummary | None) -> None:
        """The last step, or a stop (Ctrl-C, a preemption): every save committed, then the
        RAM tier given back on every host (Checkpoints.end)."""
        with self.goodput.phase("checkpoint"):
            self.checkpoints.end()


class EvalHook(Hook):
    """`eval:`: held-out loss every `eval.every_steps` and at the end."""

    needs_state = True

    def __init__(self, evaluator: HeldOutEvaluator, sink: MetricsSink, goodput: GoodputTracker):
        self.evaluator, self.sink, self.goodput = evaluator, sink, goodput

    def due(self, step: int) -> bool:
        return self.evaluator.is_due(step)

    def on_step(self, info: StepInfo) -> None:
        self.evaluator.maybe_run(info.step, info.state, self.sink, self.goodput)

    def on_end(self, step: int, state: Any, summary: RunSummary | None) -> None:
        if summary is not None:
            self.evaluator.maybe_run(step, state, self.sink, self.goodput, final=True)


class PrecompileHook(Hook):
    """After the first compiled step, the schedule's later batch sizes compile ahead of time
    into the persistent cache (precompile.py), so a restart before them loads them."""

    def __init__(self, step_fn: Callable[[int], Any], abstract_state: TrainState, mesh: Mesh,
                 train: TrainConfig, seq_len: int, compile_cache: CompileCache):
        from palm_platform.train.precompile import Precompiler, compile_train_step

        self.train, self.compile_cache = train, compile_cache
        sharding = batch_sharding(mesh)
        self.precompiler = Precompiler(
            lambda size: compile_train_step(step_fn(size), abstract_state, sharding, size,
                                            seq_len),
            [], enabled=False)

    def on_start(self, step: int) -> None:
        from palm_platform.train.precompile import later_batch_sizes

        train = self.train
        self.precompiler.sizes = later_batch_sizes(
            train.batch_size_at, [p.until_step for p in train.batch_schedule if p.until_step],
            step, train.steps)
        # Only process 0 writes JAX's persistent cache, except on CPU, where every process
        # writes its own keys (compat/jax.py, cache_writes_from_every_process_on_cpu).
        writes = jax.process_index() == 0 or jax.default_backend() == "cpu"
        self.precompiler.enabled = (writes and self.compile_cache.directory is not None
                                    and bool(self.precompiler.sizes))

    def on_step(self, info: StepInfo) -> None:
        if info.compiled:
            self.precompiler.start()

    def close(self) -> None:  # its thread writes to a cache the next Trainer may reset
        self.precompiler.join()


def build_hooks(setup: TrainSetup, supervision: Supervision,
                step_fn: Callable[[int], Any]) -> list[Hook]:
    """The job's hooks, each from the objects it uses. Their order never changes a run
    (hook_protocol.py); the goodput report at the end is the Trainer's, after every hook."""
    job, program, s = setup.job, setup.program, setup
    hooks: list[Hook] = []
    if job.faults.inject:
        from palm_platform.supervise.faults import FaultInjector

        injector = FaultInjector(job.faults.inject, host_index=jax.process_index(),
                                 state_dir=RunDir(s.run_dir).faults,
                                 batch_size_at=job.train.batch_size_at,
                                 ram_folder=s.checkpoints.ram_folder)  # kill_host loses it
        hooks.append(FaultInjectionHook(injector, s.checkpoints, job.checkpoint.directory,
                                        s.pipeline, program.mesh))
    if job.topology.elastic:
        hooks.append(ElasticHook(s.goodput, pods=program.pods, job_pods=job.topology.pods))
    hooks.append(MetricsHook(
        s.sink, s.compile_cache,
        flops_per_token=train_flops_per_token(program.model_cfg, job.seq_len),
        peak_flops=device_peak_flops() * program.mesh.size,
        pods=program.pods if job.topology.elastic else None,
        log_every=job.metrics.log_every, last_step=job.train.steps))
    if len(job.train.batch_schedule) > 1:
        hooks.append(PrecompileHook(step_fn, program.abstract_state, program.mesh, job.train,
                                    job.seq_len, s.compile_cache))
    hooks.append(CheckpointHook(s.checkpoints, supervision, pods=program.pods,
                                goodput=s.goodput, sink=s.sink))
    if job.eval is not None:
        hooks.append(EvalHook(s.evaluator, s.sink, s.goodput))
    hooks.append(ProfileHook(job.profile, s.run_dir, job.name, sink=s.sink, goodput=s.goodput))
    return hooks
