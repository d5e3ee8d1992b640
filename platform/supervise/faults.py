"""Fault injection from the job file's `faults.inject`: prove recovery by breaking things.

    injector = FaultInjector(job.faults.inject, host_index=worker_index,
                             state_dir=run_dir / "faults", batch_size_at=job.train.batch_size_at)
    for step in ...:
        injector.maybe_fire(step, checkpoint_dir=checkpointer_dir)   # kill / hang / damage
        data_state = pipeline.get_state()
        tokens = pipeline.local_batch(batch_size)
        tokens = injector.poison(step, tokens, data_state=data_state, global_batch_size=...,
                                 rows=pipeline.local_rows(...), vocab_size=...)

Once only, across restarts: before a fault acts, its marker file is written (and fsynced) in
`state_dir`, so the restarted host does not die again at the same step. A fault fires at the
first step >= its `step` that the run reaches without a marker. kill_host, crash_process,
hang_host and preempt (SIGTERM) act on host `host` only; damage_checkpoint on host `host`
(default 0) only; poison_batches on every host (it is data).

Poison is defined on data positions, not steps: the first time step S is reached, the
global sequences its `steps` batches will read are recorded (persisted in `state_dir`,
identical on every host). From then on those sequences are poisoned wherever they appear,
and no others. A rollback that skips them therefore never sees the poison again, while a
restart that replays them without a skip sees exactly the same poison.

Poisoned tokens: row g (global sequence index) becomes tokens drawn uniformly from the
whole vocabulary by a generator seeded with (POISON_SEED, g): a pure function of g and the
vocabulary size. Under any model, the expected cross-entropy of uniform targets is at least
ln(vocab_size) (Gibbs' inequality), far above a trained model's loss on text, so the loss
spikes hard.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from palm_platform.atomic_write import write_atomic
from palm_platform.checkpoint.manifest import MANIFEST_NAME
from palm_platform.supervise.config import FaultInjection
from palm_platform.supervise.positions import batch_sequence_indices, first_unskipped

log = logging.getLogger(__name__)

POISON_SEED = 0x9015


def poison_tokens(sequence_index: int, length: int, vocab_size: int) -> np.ndarray:
    """int32 [length]: the poisoned content of global sequence `sequence_index`."""
    rng = np.random.default_rng([POISON_SEED, int(sequence_index)])
    return rng.integers(0, vocab_size, size=length, dtype=np.int32)


# Set by the host agent (ray/host_agent.py) in the JAX process it runs: the agent's pid.
HOST_AGENT_PID_ENV = "PALM_HOST_AGENT_PID"


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _lose_host() -> None:
    """A lost host: everything on it dies, so under a host agent the agent too (Ray Train
    then sees its actor gone and restarts the group), then this JAX process."""
    agent = os.environ.get(HOST_AGENT_PID_ENV)
    if agent and int(agent) != os.getpid():
        try:
            os.kill(int(agent), signal.SIGKILL)
        except ProcessLookupError:
            pass
    _kill_self()


def _notice_self() -> None:
    """A preemption notice, as GCE gives it: SIGTERM, and the process carries on until the
    hosts agree on a step (checkpoint/preemption.py)."""
    os.kill(os.getpid(), signal.SIGTERM)


def _lose_ram_then(ram_folder: Path, kill: Callable[[], None]) -> None:
    shutil.rmtree(ram_folder, ignore_errors=True)
    kill()


def _hang_forever() -> None:
    while True:  # the watchdog (or Ray's health check) must end this process
        time.sleep(60)


class FaultInjector:
    def __init__(
        self,
        faults: Sequence[FaultInjection],
        *,
        host_index: int,
        state_dir: str | Path,
        batch_size_at: Callable[[int], int] | None = None,
        kill: Callable[[], None] = _lose_host,
        crash: Callable[[], None] = _kill_self,
        hang: Callable[[], None] = _hang_forever,
        preempt: Callable[[], None] = _notice_self,
        ram_folder: str | Path | None = None,
    ):
        """kill (kill_host) and crash (crash_process) differ in what survives: a crash takes
        only this JAX process, its host (agent, RAM checkpoints) stays.
        batch_size_at: global batch size by step (job.train.batch_size_at), to size the
        poisoned range when the batch size ramps inside it; default: the size at step S.
        ram_folder: this host's RAM checkpoint folder; kill_host deletes it first, as the
        loss of a real host loses its RAM (the fake hosts of the local cluster share one)."""
        self.faults = list(faults)
        self.host_index = host_index
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._batch_size_at = batch_size_at
        if ram_folder is not None:
            kill = functools.partial(_lose_ram_then, Path(ram_folder), kill)
        self._actions = {"kill_host": kill, "crash_process": crash, "hang_host": hang,
                         "preempt": preempt}

    # -- identity and markers -----------------------------------------------------------

    def _fault_id(self, index: int, fault: FaultInjection) -> str:
        return f"{index:02d}-{fault.kind}-step{fault.step}-host{fault.host}"

    def _marker(self, index: int, fault: FaultInjection) -> Path:
        return self.state_dir / f"{self._fault_id(index, fault)}.fired"

    def _poison_record(self, index: int, fault: FaultInjection) -> Path:
        return self.state_dir / f"{self._fault_id(index, fault)}.json"

    def fired(self) -> list[FaultInjection]:
        """Faults that have acted (or, for poison, whose data range is recorded)."""
        return [f for i, f in enumerate(self.faults)
                if self._marker(i, f).exists() or self._poison_record(i, f).exists()]

    def _write_durably(self, path: Path, text: str) -> None:
        # Durable: a marker must survive the SIGKILL its fault is about to send.
        write_atomic(path, text, durable=True)

    # -- kill, hang, damage -------------------------------------------------------------

    def damage_due(self, step: int) -> bool:
        """Whether the caller must wait for in-flight saves before `step`: a damage_checkpoint
        fault is configured for this step, on any host (then the damage hits the newest
        checkpoint).

        True on every host, not only the damaging one, and regardless of markers: with
        several processes the wait ends in a barrier (Checkpointer.wait_until_finished), so
        every host must make the same call at the same step. The answer is a function of the
        job file and the step alone (markers are per host on real pods); a replay of the
        step after a restart waits once more, which is harmless.
        """
        return any(fault.kind == "damage_checkpoint" and fault.step == step
                   for fault in self.faults)

    def maybe_fire(self, step: int, *, checkpoint_dir: str | Path | None = None) -> list[str]:
        """Call before each step. Fires due kill/hang/damage faults of this host, once each.

        Returns what it did (damage); kill and hang do not return, preempt does. For
        damage_checkpoint, call `checkpointer.wait_until_finished()` first: a checkpoint
        still being written has no manifest yet and is not damaged (the fault waits for a
        later step).
        """
        done = []
        for index, fault in enumerate(self.faults):
            if fault.kind == "poison_batches" or fault.host != self.host_index:
                continue
            if step < fault.step or self._marker(index, fault).exists():
                continue
            if fault.kind == "damage_checkpoint":
                if checkpoint_dir is None:
                    raise ValueError("a damage_checkpoint fault is configured: pass checkpoint_dir")
                victim = newest_finished_checkpoint(Path(checkpoint_dir))
                if victim is None:
                    log.info("fault %s: no finished checkpoint yet, waiting", fault)
                    continue
                self._write_durably(self._marker(index, fault), json.dumps({"step": step}))
                path = damage_checkpoint(victim)
                log.warning("FAULT step %d host %d: truncated %s", step, self.host_index, path)
                done.append(f"damage_checkpoint: truncated {path}")
                continue
            self._write_durably(self._marker(index, fault), json.dumps({"step": step}))
            log.warning("FAULT step %d host %d: %s", step, self.host_index, fault.kind)
            for handler in logging.getLogger().handlers:
                handler.flush()  # SIGKILL loses unflushed log lines
            self._actions[fault.kind]()
        return done

    # -- poison -------------------------------------------------------------------------

    def poisoned_ranges(self) -> list[tuple[int, int]]:
        """Recorded [first, end) global sequence ranges (read from state_dir)."""
        ranges = []
        for index, fault in enumerate(self.faults):
            path = self._poison_record(index, fault)
            if fault.kind == "poison_batches" and path.exists():
                record = json.loads(path.read_text())
                ranges.append((int(record["first_sequence"]), int(record["end_sequence"])))
        return sorted(ranges)

    def record_poison(self, step: int, *, data_state: dict, global_batch_size: int) -> None:
        """Record the data range of every poison fault first reached at `step`."""
        for index, fault in enumerate(self.faults):
            if fault.kind != "poison_batches" or step < fault.step:
                continue
            path = self._poison_record(index, fault)
            if path.exists():
                continue
            size_at = self._batch_size_at or (lambda _s: global_batch_size)
            count = sum(size_at(s) for s in range(step, step + fault.steps))
            first = first_unskipped(data_state)
            record = {"step": step, "steps": fault.steps, "first_sequence": first,
                      "end_sequence": first + count}
            self._write_durably(path, json.dumps(record))
            log.warning("FAULT step %d: poisoning global sequences [%d, %d) (%d batches)",
                        step, first, first + count, fault.steps)

    def poison(
        self,
        step: int,
        tokens: np.ndarray,
        *,
        data_state: dict,
        global_batch_size: int,
        rows: np.ndarray,
        vocab_size: int,
    ) -> np.ndarray:
        """This host's rows [len(rows), L + 1] of the batch read from `data_state` (`rows`:
        which rows of the global batch, Pipeline.local_rows), with every row whose global
        sequence lies in a poisoned range replaced."""
        if not any(f.kind == "poison_batches" for f in self.faults):
            return tokens
        self.record_poison(step, data_state=data_state, global_batch_size=global_batch_size)
        ranges = self.poisoned_ranges()
        if not ranges:
            return tokens
        indices = batch_sequence_indices(data_state, global_batch_size)
        mine = np.asarray(indices)[rows]
        if len(mine) != tokens.shape[0]:
            raise ValueError(
                f"tokens has {tokens.shape[0]} rows but this host reads {len(mine)} rows of a "
                f"{global_batch_size}-sequence batch"
            )
        hit = np.zeros(len(mine), bool)
        for start, end in ranges:
            hit |= (mine >= start) & (mine < end)
        if not hit.any():
            return tokens
        out = tokens.copy()
        for row in np.flatnonzero(hit):
            out[row] = poison_tokens(int(mine[row]), tokens.shape[1], vocab_size)
        return out


def newest_finished_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest step folder that has its manifest (fully written and committed)."""
    if not checkpoint_dir.is_dir():
        return None
    steps = sorted((int(p.name), p) for p in checkpoint_dir.iterdir()
                   if p.is_dir() and p.name.isdigit() and (p / MANIFEST_NAME).exists())
    return steps[-1][1] if steps else None


def damage_checkpoint(step_dir: Path) -> Path:
    """Truncate the largest data file of a checkpoint to half its size; returns its path.

    The largest file is an array chunk, so the damage is in the data (not only metadata);
    the manifest's size check must catch it and restore must fall back to an older step.
    """
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME]
    if not files:
        raise FileNotFoundError(f"{step_dir}: no files to damage")
    victim = min(files, key=lambda p: (-p.stat().st_size, str(p)))
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    return victim
