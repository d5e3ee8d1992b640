"""What the train loop does around each step, as hooks built once from the job.

The loop (`loop.py`) is "get batch, step, hooks"; everything that is not the step itself is
a hook (the contract: `hook_protocol.py`), and a job gets only the hooks it asks for (fault
injection only when `faults.inject` lists faults, held-out eval only with an `eval:`
section). Each hook holds what it reads (the set-up, the supervision state), never the
Trainer. The worker adds its supervision hook (watchdog, liveness, stop check:
`supervise/heartbeat.py`); a new hook subclasses `Hook` and is added in `build_hooks`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from palm_platform.atomic_write import write_atomic
from palm_platform.data.global_array import to_global_array
from palm_platform.hook_protocol import Hook, RunSummary, StepInfo
from palm_platform.mesh import batch_sharding
from palm_platform.run_dir import RunDir
from palm_platform.train.mfu import mfu
from palm_platform.train.setup import TrainSetup

if TYPE_CHECKING:
    from palm_platform.supervise.recovery import Supervision
    from palm_platform.train.prefetch import Batch

logger = logging.getLogger("palm")


class FaultInjectionHook(Hook):
    """`faults.inject`: kill, hang or damage before a step; poison a batch's tokens."""

    every = 0  # acts before steps only

    def __init__(self, setup: TrainSetup):
        from palm_platform.supervise.faults import FaultInjector

        self.setup = setup
        local = setup.tiers.local  # kill_host loses this host's RAM tier with it
        self.injector = FaultInjector(setup.job.faults.inject, host_index=setup.process_index,
                                      state_dir=RunDir(setup.run_dir).faults,
                                      batch_size_at=setup.job.train.batch_size_at,
                                      ram_folder=local.folder if local is not None else None)

    def before_step(self, batch: Batch, array: Any) -> Any:
        s, step = self.setup, batch.step
        if self.injector.damage_due(step):
            s.checkpointer.wait_until_finished()  # damage the newest checkpoint
        self.injector.maybe_fire(step, checkpoint_dir=s.job.checkpoint.directory)
        local = self.injector.poison(
            step, batch.local, data_state=batch.data_state, global_batch_size=batch.batch_size,
            rows=s.pipeline.local_rows(batch.batch_size), vocab_size=s.pipeline.vocab_size,
        )
        return array if local is batch.local else to_global_array(local, batch_sharding(s.mesh))


class MetricsHook(Hook):
    """Each read step: throughput and MFU, the JSONL/W&B record, the progress line."""

    def __init__(self, setup: TrainSetup):
        self.setup = setup

    def on_step(self, info: StepInfo) -> None:
        s, step = self.setup, info.step
        record = dict(info.metrics)
        step_s = record["step_s"]
        if s.job.topology.elastic:  # each step says its pod count
            record["pods"] = s.pods
        tokens_per_s = record["tokens"] / step_s
        record.update(
            tokens_per_s=tokens_per_s, batch_size=info.batch.batch_size,
            mfu=mfu(tokens_per_s, s.flops_per_token, s.peak_flops), compiled=info.compiled,
        )
        if info.pods_identical is not None:
            record["pods_identical"] = info.pods_identical
        s.sink.log(step, record)
        if info.compiled:
            s.sink.event("compiled", step, batch_size=info.batch.batch_size,
                         seconds=round(step_s, 1), **s.cache_counts())
        total = s.job.train.steps
        if s.process_index == 0 and (step % s.job.metrics.log_every == 0 or step == total):
            logger.info("step %d/%d loss %.4f tokens/s %.0f mfu %.2f%%", step, total,
                        record["loss"], record["tokens_per_s"], 100 * record["mfu"])


class ElasticHook(Hook):
    """`topology.min_pods`: on fewer pods than the job's, the missing pods' share of each
    step's time is badput "degraded" (platform/pod_count.py)."""

    def __init__(self, setup: TrainSetup):
        self.setup = setup

    def on_step(self, info: StepInfo) -> None:
        s = self.setup
        if s.pods < s.job.topology.pods:
            s.goodput.reclassify(info.step - 1, 1 - s.pods / s.job.topology.pods,
                                 cause="degraded")


class CheckpointHook(Hook):
    """Saves on the tiers' cadence (`checkpoint.every_steps`, `checkpoint.local`) and the
    last step (a preemption notice's step: supervise/preemption.py); waits at the end."""

    needs_state = True

    def __init__(self, setup: TrainSetup, supervision: Supervision):
        self.setup, self.supervision = setup, supervision

    def due(self, step: int) -> bool:
        return bool(self.setup.tiers.due(step))  # the last step is on the schedule too

    def on_step(self, info: StepInfo) -> None:
        from palm_platform.checkpoint.tiers import LOCAL, PERSISTENT

        due = self.setup.tiers.due(info.step)
        if LOCAL in due:  # first: its device copy is dispatched before the persistent one's
            self.save_local(info)
        if PERSISTENT in due:
            self.save_persistent(info)
        if due and self.setup.process_index == 0:
            # The goodput file with every save of either tier: a restart charges the time
            # since the file's save to "restart". Written with persistent saves only, a
            # restore from a newer RAM step charged the kept steps between the two as
            # restart too (11 s of each 30 s restart in a soak of 3.7 s steps).
            write_atomic(self.setup.goodput_path, json.dumps(self.setup.goodput.state_dict()))

    def save_local(self, info: StepInfo) -> None:
        """The RAM tier; `blocked_s` is what the loop waited (the on-device copies)."""
        s = self.setup
        start = time.monotonic()
        with s.goodput.phase("checkpoint"):
            s.tiers.save_local(info.step, info.state, info.batch.data_state_after,
                               self.supervision.checkpoint_item(s.pods))
        s.sink.event("checkpoint_saved", info.step, tier="local",
                     blocked_s=round(time.monotonic() - start, 4))

    def save_persistent(self, info: StepInfo) -> None:
        s = self.setup
        start = time.monotonic()
        with s.goodput.phase("checkpoint"):  # force: the last step may be off the cadence
            saved = s.checkpointer.save(info.step, info.state, info.batch.data_state_after,
                                        self.supervision.checkpoint_item(s.pods), force=True)
        if saved:  # blocked_s: how long the loop waited (the on-device copy of the state)
            s.sink.event("checkpoint_saved", info.step,
                         blocked_s=round(time.monotonic() - start, 3))

    def on_end(self, step: int, state: Any, summary: RunSummary | None) -> None:
        if summary is None:  # stopped early: Trainer.close() waits for the save
            return
        with self.setup.goodput.phase("checkpoint"):
            self.setup.tiers.wait_until_finished()


class EvalHook(Hook):
    """`eval:`: held-out loss every `eval.every_steps` and at the end."""

    needs_state = True

    def __init__(self, setup: TrainSetup):
        self.setup = setup

    def due(self, step: int) -> bool:
        return self.setup.evaluator.is_due(step)

    def on_step(self, info: StepInfo) -> None:
        s = self.setup
        s.evaluator.maybe_run(info.step, info.state, s.sink, s.goodput)

    def on_end(self, step: int, state: Any, summary: RunSummary | None) -> None:
        if summary is None:
            return
        s = self.setup
        s.evaluator.maybe_run(step, state, s.sink, s.goodput, final=True)


class GoodputHook(Hook):
    """The run's goodput and badput causes: one event when it ends (or is stopped early),
    kept in the run folder."""

    every = 0

    def __init__(self, setup: TrainSetup, supervision: Supervision):
        self.setup, self.supervision = setup, supervision

    def on_end(self, step: int, state: Any, summary: RunSummary | None) -> None:
        from palm_platform.supervise.restart_account import by_goodput_name

        s = self.setup
        goodput = s.goodput.summary()
        s.sink.event("goodput", step, **{k: v for k, v in goodput.items() if k != "badput_s"},
                     **{f"badput_{k}_s": v for k, v in goodput["badput_s"].items()},
                     # the same seconds under ml-goodput-measurement's names
                     **{f"by_type_{k}_s": v
                        for k, v in by_goodput_name(goodput["badput_s"]).items()},
                     **s.cache_counts())
        if s.process_index == 0:
            write_atomic(s.goodput_path, json.dumps(s.goodput.state_dict()))
        self.supervision.save_ledger(s)
        if summary is not None:
            summary.extra["goodput"] = goodput


class PrecompileHook(Hook):
    """After the first compiled step, the schedule's later batch sizes compile ahead of time
    into the persistent cache (precompile.py), so a restart before them loads them."""

    def __init__(self, setup: TrainSetup, step_fn: Callable[[int], Any]):
        from palm_platform.train.precompile import Precompiler, compile_train_step

        self.setup = s = setup
        sharding = batch_sharding(s.mesh)
        self.precompiler = Precompiler(
            lambda size: compile_train_step(step_fn(size), s.abstract_state, sharding, size,
                                            s.job.seq_len),
            [], enabled=False)

    def on_start(self, step: int) -> None:
        import jax

        from palm_platform.train.precompile import later_batch_sizes

        s, train = self.setup, self.setup.job.train
        self.precompiler.sizes = later_batch_sizes(
            train.batch_size_at, [p.until_step for p in train.batch_schedule if p.until_step],
            step, train.steps)
        # Only process 0 writes JAX's persistent cache, except on CPU, where every process
        # writes its own keys (ray/compat.py, cache_writes_from_every_process_on_cpu).
        writes = s.process_index == 0 or jax.default_backend() == "cpu"
        self.precompiler.enabled = (writes and s.compile_cache.directory is not None
                                    and bool(self.precompiler.sizes))

    def on_step(self, info: StepInfo) -> None:
        if info.compiled:
            self.precompiler.start()

    def close(self) -> None:  # its thread writes to a cache the next Trainer may reset
        self.precompiler.join()


def build_hooks(setup: TrainSetup, supervision: Supervision,
                step_fn: Callable[[int], Any]) -> list[Hook]:
    """The job's hooks. Their order does not matter for a step (hook_protocol.py); it is
    the order of `on_end`: the last save's wait, the final eval, then goodput, which
    counts both."""
    job = setup.job
    hooks: list[Hook] = []
    if job.faults.inject:
        hooks.append(FaultInjectionHook(setup))
    if job.topology.elastic:
        hooks.append(ElasticHook(setup))
    hooks.append(MetricsHook(setup))
    if len(job.train.batch_schedule) > 1:
        hooks.append(PrecompileHook(setup, step_fn))
    checkpoint = CheckpointHook(setup, supervision)
    hooks.append(checkpoint)
    from palm_platform.supervise.preemption import PreemptionHook

    hooks.append(PreemptionHook(setup, checkpoint))  # after the checkpoint hook: completes it
    if job.eval is not None:
        hooks.append(EvalHook(setup))
    hooks.append(GoodputHook(setup, supervision))
    return hooks
