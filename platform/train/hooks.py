"""What the train loop does around each step, as hooks built once from the job.

The loop (`loop.py`) is "get batch, step, hooks"; everything that is not the step itself is
a hook here, and a job gets only the hooks it asks for (fault injection only when
`faults.inject` lists faults, held-out eval only with an `eval:` section):

    on_start(step)                      once, after the restore
    before_step(batch, array) -> array  may replace the batch's data (fault injection)
    needs_state(step) -> bool           must step `step` be read at once (checkpoint, eval)?
    after_step(step, metrics, done)     a step's metrics, read (and spike-checked)
    with_state(step, state, batch)      the state after `step`, for steps read at once
    on_end(step, state, summary)        once, after the last step; may add to the summary
    on_stop(step)                       instead of on_end, when the run stops early (Ctrl-C)
    close()                             when the Trainer closes, also after a failed run

A new hook subclasses `Hook` and is added in `build_hooks`; the loop needs no change.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from palm_platform.atomic_write import write_atomic
from palm_platform.data.global_array import to_global_array
from palm_platform.mesh import batch_sharding

if TYPE_CHECKING:  # loop.py imports this module: the hooks only hold a Trainer
    from palm_platform.train.loop import RunSummary, Trainer, _Dispatched
    from palm_platform.train.prefetch import Batch

logger = logging.getLogger("palm")


class Hook:
    """No-op defaults: a hook overrides what it needs."""

    def on_start(self, step: int) -> None:
        pass

    def before_step(self, batch: Batch, array: Any) -> Any:
        return array

    def needs_state(self, step: int) -> bool:
        return False

    def after_step(self, step: int, metrics: dict, done: _Dispatched) -> None:
        pass

    def with_state(self, step: int, state: Any, batch: Batch) -> None:
        pass

    def on_end(self, step: int, state: Any, summary: RunSummary) -> None:
        pass

    def on_stop(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class FaultInjectionHook(Hook):
    """`faults.inject`: kill, hang or damage before a step; poison a batch's tokens."""

    def __init__(self, trainer: Trainer):
        from palm_platform.supervise.faults import FaultInjector

        self.trainer = trainer
        job = trainer.job
        local = trainer.tiers.local
        self.injector = FaultInjector(job.faults.inject, host_index=trainer.process_index,
                                      state_dir=trainer.run_dir / "faults",
                                      batch_size_at=job.train.batch_size_at,
                                      ram_folder=local.folder if local is not None else None)

    def before_step(self, batch: Batch, array: Any) -> Any:
        t, step = self.trainer, batch.step
        if self.injector.damage_due(step):
            t.checkpointer.wait_until_finished()  # damage the newest checkpoint
        self.injector.maybe_fire(step, checkpoint_dir=t.job.checkpoint.directory)
        local = self.injector.poison(
            step, batch.local, data_state=batch.data_state, global_batch_size=batch.batch_size,
            process_index=t.process_index, process_count=t.process_count,
            vocab_size=t.pipeline.vocab_size,
        )
        return array if local is batch.local else to_global_array(local, batch_sharding(t.mesh))


class MetricsHook(Hook):
    """Each read step: throughput and MFU, the JSONL/W&B record, the progress line."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def after_step(self, step: int, metrics: dict, done: _Dispatched) -> None:
        t = self.trainer
        step_s = metrics["step_s"]
        metrics.update(
            tokens_per_s=metrics["tokens"] / step_s, batch_size=done.batch.batch_size,
            mfu=metrics["tokens"] / step_s * t.flops_per_token / t.peak_flops,
            compiled=done.compiled,
        )
        if done.pods_identical is not None:
            metrics["pods_identical"] = done.pods_identical
        t.sink.log(step, metrics)
        if done.compiled:
            t.sink.event("compiled", step, batch_size=done.batch.batch_size,
                         seconds=round(step_s, 1), **t.cache_counts())
        t.on_step(step)
        total = t.job.train.steps
        if t.process_index == 0 and (step % t.job.metrics.log_every == 0 or step == total):
            logger.info("step %d/%d loss %.4f tokens/s %.0f mfu %.2f%%", step, total,
                        metrics["loss"], metrics["tokens_per_s"], 100 * metrics["mfu"])


class ElasticHook(Hook):
    """`topology.min_pods`: each step says its pod count, and on fewer pods than the job's
    the missing pods' share of the step's time is badput "degraded" (platform/elastic.py)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def after_step(self, step: int, metrics: dict, done: _Dispatched) -> None:
        t = self.trainer
        metrics["pods"] = t.pods
        if t.pods < t.job.topology.pods:
            t.goodput.reclassify(step - 1, 1 - t.pods / t.job.topology.pods, cause="degraded")


class CheckpointHook(Hook):
    """Saves every `checkpoint.every_steps` and the last step; waits for saves at the end."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def needs_state(self, step: int) -> bool:
        return step == self.trainer.job.train.steps or bool(self.trainer.tiers.due(step))

    def with_state(self, step: int, state: Any, batch: Batch) -> None:
        from palm_platform.checkpoint.tiers import LOCAL, PERSISTENT

        due = self.trainer.tiers.due(step)
        if LOCAL in due:  # first: its copy is dispatched before the persistent save's
            self.trainer.save_local(step, state, batch.data_state_after)
        if PERSISTENT in due or step == self.trainer.job.train.steps:
            self.trainer.save_checkpoint(step, state, batch.data_state_after, force=True)

    def on_end(self, step: int, state: Any, summary: RunSummary) -> None:
        with self.trainer.goodput.phase("checkpoint"):
            self.trainer.tiers.wait_until_finished()


class EvalHook(Hook):
    """`eval:`: held-out loss every `eval.every_steps` and at the end."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def needs_state(self, step: int) -> bool:
        return self.trainer.evaluator.is_due(step)

    def with_state(self, step: int, state: Any, batch: Batch) -> None:
        t = self.trainer
        t.evaluator.maybe_run(step, state, t.sink, t.goodput)

    def on_end(self, step: int, state: Any, summary: RunSummary) -> None:
        t = self.trainer
        t.evaluator.maybe_run(step, state, t.sink, t.goodput, final=True)


class GoodputHook(Hook):
    """The run's goodput and badput causes: one event when it ends (or is stopped early),
    kept in the run folder."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_end(self, step: int, state: Any, summary: RunSummary) -> None:
        summary.extra["goodput"] = self.on_stop(step)

    def on_stop(self, step: int) -> dict:
        from palm_platform.supervise.restart_account import by_goodput_name

        t = self.trainer
        goodput = t.goodput.summary()
        t.sink.event("goodput", step, **{k: v for k, v in goodput.items() if k != "badput_s"},
                     **{f"badput_{k}_s": v for k, v in goodput["badput_s"].items()},
                     **{f"by_type_{k}_s": v for k, v in by_goodput_name(goodput["badput_s"]).items()},
                     **t.cache_counts())
        if t.process_index == 0:
            write_atomic(t.goodput_path, json.dumps(t.goodput.state_dict()))
            t.ledger.save(t.ledger_path)
        return goodput


class PrecompileHook(Hook):
    """After the first compiled step, the schedule's later batch sizes compile ahead of time
    into the persistent cache (precompile.py), so a restart before them loads them."""

    def __init__(self, trainer: Trainer):
        from palm_platform.train.precompile import Precompiler, compile_train_step

        self.trainer, t = trainer, trainer
        sharding = batch_sharding(t.mesh)
        self.precompiler = Precompiler(
            lambda size: compile_train_step(t.step_fn(size), t.abstract_state, sharding, size,
                                            t.job.seq_len),
            [], enabled=False)

    def on_start(self, step: int) -> None:
        import jax

        from palm_platform.train.precompile import later_batch_sizes

        t, train = self.trainer, self.trainer.job.train
        self.precompiler.sizes = later_batch_sizes(
            train.batch_size_at, [p.until_step for p in train.batch_schedule if p.until_step],
            step, train.steps)
        # Only process 0 writes JAX's persistent cache, except on CPU, where every process
        # writes its own keys (ray/compat.py, cache_writes_from_every_process_on_cpu).
        writes = t.process_index == 0 or jax.default_backend() == "cpu"
        self.precompiler.enabled = (writes and t.compile_cache.directory is not None
                                    and bool(self.precompiler.sizes))

    def after_step(self, step: int, metrics: dict, done: _Dispatched) -> None:
        if done.compiled:
            self.precompiler.start()

    def close(self) -> None:  # its thread writes to a cache the next Trainer may reset
        self.precompiler.join()


def build_hooks(trainer: Trainer) -> list[Hook]:
    """The job's hooks, in the order they run: faults act before the step; a step's state is
    saved before it is evaluated; at the end, eval, then the last save, then goodput."""
    from palm_platform.supervise.preemption import PreemptionHook

    hooks: list[Hook] = [PreemptionHook(trainer)]  # first: asked at every step (its docstring)
    if trainer.job.faults.inject:
        hooks.append(FaultInjectionHook(trainer))
    if trainer.job.topology.elastic:  # before the metrics record, which carries `pods`
        hooks.append(ElasticHook(trainer))
    hooks.append(MetricsHook(trainer))
    if trainer.attempt > 0:  # a restarted group: its `restart` record, by cause
        from palm_platform.supervise.restart_account import RecoveryHook

        hooks.append(RecoveryHook(trainer))
    if len(trainer.job.train.batch_schedule) > 1:
        hooks.append(PrecompileHook(trainer))
    hooks.append(CheckpointHook(trainer))
    if trainer.job.eval is not None:
        hooks.append(EvalHook(trainer))
    hooks.append(GoodputHook(trainer))
    return hooks

