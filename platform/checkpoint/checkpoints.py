"""The checkpoint component's one face: both tiers, when each is due, the save, the preemption's
agreed save, and the restore of the newest good step of either tier.

    checkpoints = Checkpoints.build(job.checkpoint, job_name=..., last_step=..., ...)
    due = checkpoints.due(step)         # asked once per step: the one save decision
    checkpoints.save(step, due, state, data_state, extras)   # -> seconds the loop waited
    restored = checkpoints.restore()    # the newest complete step of either tier
    restored = checkpoints.roll_back_to(step)   # a spike's rollback (persistent tier)
    checkpoints.end()                   # the run ended: saves committed, RAM given back

The persistent tier (`checkpoint.every_steps`, gs:// on pods: checkpointer.py) and the RAM
tier (`checkpoint.local.every_steps`, /dev/shm: local_tier.py) keep their own cadences; the
last step of a run is saved persistently whatever its number, so a finished run leaves a
checkpoint behind; a preemption notice's agreed step (preemption.py) saves every tier and
waits for every host's commit before the run ends.

Restore reads the RAM tier when some replica holds a step at least as new as the newest
persistent one (peer_restore.py: the host's own RAM, else the other pod's, else the ring
neighbour's), and persistent storage otherwise. Every host takes the same decision: the RAM
holdings are allgathered, the persistent steps are read from the same directory. A newer
RAM step that some host held is never passed over silently: the restore names the hosts
that lacked its blocks (`Restored.why_not_ram`, in the `checkpoint_restored` event).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax

from palm_platform.checkpoint.checkpointer import Checkpointer, Restored
from palm_platform.checkpoint.config import CheckpointConfig
from palm_platform.checkpoint.local_tier import LocalTier, root_for
from palm_platform.checkpoint.manifest import read_manifest
from palm_platform.checkpoint.peer_restore import (
    gather_inventory,
    plan_ram_restore,
    pods_of_processes,
    restore_from_ram,
    why_not_ram,
)
from palm_platform.checkpoint.preemption import PreemptionNotice

PERSISTENT, LOCAL = "persistent", "local"


@dataclasses.dataclass(frozen=True)
class Due:
    """The tiers to save after a step; `preempted`: the hosts' agreed step after a preemption
    notice (every tier, and the save waits for every host's commit)."""

    tiers: frozenset[str] = frozenset()
    preempted: bool = False

    def __bool__(self) -> bool:
        return bool(self.tiers)


class Checkpoints:
    """A run's checkpoints, both tiers, for one JAX process (every process calls every method)."""

    def __init__(self, config: CheckpointConfig, persistent: Checkpointer,
                 local: LocalTier | None, abstract_state: Any, *, last_step: int | None,
                 notice: PreemptionNotice):
        self.config, self.persistent, self.local = config, persistent, local
        self.abstract_state, self.last_step, self.notice = abstract_state, last_step, notice

    @classmethod
    def build(cls, config: CheckpointConfig, *, job_name: str, last_step: int,
              abstract_state: Any, mesh: jax.sharding.Mesh, pods: int,
              launch: float | None = None) -> Checkpoints:
        """`launch`: this `palm run`'s start (the RAM tier keeps that launch's steps only)."""
        local = None
        if config.local is not None:
            local = LocalTier(root_for(config.local, job_name), abstract_state, mesh, pods=pods,
                              launch=launch)
        return cls(config, Checkpointer(config, directory=config.directory), local,
                   abstract_state, last_step=last_step,
                   notice=PreemptionNotice.for_this_process())

    @property
    def ram_folder(self) -> Path | None:
        """This host's RAM-tier folder (a host loss loses it), None without the tier."""
        return self.local.folder if self.local is not None else None

    # -- saving -------------------------------------------------------------------------

    def due(self, step: int) -> Due:
        """The tiers to save after `step`. Ask once per step, on every host: the preemption
        notice's question is a collective that counts the calls."""
        tiers = set()
        if step % self.config.every_steps == 0 or step == self.last_step:
            tiers.add(PERSISTENT)
        if self.local is not None and step % self.config.local.every_steps == 0:
            tiers.add(LOCAL)
        if self.notice.reached(step):
            # Both tiers: the RAM copy restores fastest when the host comes back (a
            # maintenance event keeps its RAM only if the VM survives); the persistent one
            # survives anything.
            return Due(frozenset({PERSISTENT} | ({LOCAL} if self.local is not None else set())),
                       preempted=True)
        return Due(frozenset(tiers))

    def save(self, step: int, due: Due, train_state: Any, data_state: dict,
             extras: dict) -> dict[str, float]:
        """Save the tiers `due` names; returns the seconds the loop waited for each (the
        on-device copies; the writes run in the background, except at a preemption's step,
        which waits for every host's commit before the process leaves)."""
        waited = {}
        if LOCAL in due.tiers:  # first: its device copy is dispatched before the persistent one
            start = time.monotonic()
            self.local.save(step, train_state, data_state, extras)
            waited[LOCAL] = time.monotonic() - start
        if PERSISTENT in due.tiers:
            start = time.monotonic()
            self.persistent.save(step, train_state, data_state, extras)
            waited[PERSISTENT] = time.monotonic() - start
        if due.preempted:
            self.wait_until_finished()
        return waited

    def wait_until_finished(self) -> None:
        if self.local is not None:
            self.local.wait_until_finished()
        self.persistent.wait_until_finished()

    def end(self) -> None:
        """The run ended on every host: its last step, a Ctrl-C's agreed stop, or a
        preemption's agreed step. Every save is committed first (the last step and a
        preemption's step are persistent then: what a later resume reads), then the RAM tier
        is given back on every host. A failed run never comes here: Ray Train's restart
        restores from that RAM."""
        self.wait_until_finished()
        if self.local is not None:
            self.local.release()

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        self.persistent.close()
        self.notice.close()

    # -- restoring ----------------------------------------------------------------------

    def restore(self) -> Restored:
        """The newest complete step of either tier; CheckpointNotFound when neither has one.

        When some host held a newer RAM step than the one restored, the result says which
        and why it was passed over (`why_not_ram`: the hosts that lacked its blocks)."""
        newest_persistent = max(self.persistent.steps(), default=-1)
        if self.local is None:
            return self._restore_persistent()
        inventory = gather_inventory(self.local)
        pod_of = pods_of_processes(self.local.mesh)
        plan = plan_ram_restore(inventory.holdings, pod_of)
        if plan is not None and plan.step >= newest_persistent:
            restored = restore_from_ram(self.local, plan)
        else:
            restored = self._restore_persistent()
        passed_over = why_not_ram(inventory, pod_of, restored.step)
        if passed_over is None:
            return restored
        step, why = passed_over
        return dataclasses.replace(restored, newer_ram_step=step, why_not_ram=why)

    def _restore_persistent(self) -> Restored:
        restored = self.persistent.restore(self.abstract_state)
        return dataclasses.replace(restored, bytes_persistent=self._persistent_bytes(restored.step))

    def persistent_steps(self) -> list[int]:
        """The persistent tier's steps once its saves are committed (a rollback's choice:
        every host sees the same list)."""
        self.persistent.wait_until_finished()
        return self.persistent.steps()

    def roll_back_to(self, step: int) -> Restored:
        """Restore persistent `step`; newer steps of both tiers are an abandoned trajectory
        and are dropped."""
        restored = self.persistent.restore(self.abstract_state, step=step)
        self.persistent.discard_after(step)
        if self.local is not None:
            self.local.discard_after(step)
        return restored

    def _persistent_bytes(self, step: int) -> int:
        """The step's size from its manifest: what the restore read (every host's share)."""
        manifest = read_manifest(self.persistent.directory / str(step)) or {}
        return sum(int(entry.get("size", 0)) for entry in manifest.get("files", {}).values())
