"""Both checkpoint tiers behind one save and one restore, on one cadence (`tiers.py`).

    tiers = TieredCheckpoints.build(job, checkpointer, abstract_state, mesh, pods)
    tiers.save_due(step, state, data_state, ledger)   # the tiers due at `step`
    restored = tiers.restore(abstract_state)          # the newest complete step, either tier

Restore reads the RAM tier when some replica holds a step at least as new as the newest
persistent one (`peer_restore.py`: the host's own RAM, else the other pod's, else the ring
neighbour's), and persistent storage otherwise. Every host takes the same decision: the RAM
holdings are allgathered, the persistent steps are read from the same directory.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax

from palm_platform.checkpoint.checkpointer import Checkpointer
from palm_platform.checkpoint.local_tier import LocalTier, root_for
from palm_platform.checkpoint.manifest import read_manifest
from palm_platform.checkpoint.peer_restore import (
    gather_holdings,
    plan_ram_restore,
    pods_of_processes,
    restore_from_ram,
)
from palm_platform.checkpoint.tiers import LOCAL, PERSISTENT, TierSchedule

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TieredRestore:
    step: int
    train_state: Any
    data_state: dict
    ledger: dict
    tier: str  # "local", "peer" or "persistent"
    bytes_local: int = 0
    bytes_peer: int = 0
    bytes_persistent: int = 0

    def record(self) -> dict:
        """The `checkpoint_restored` record's fields."""
        return {"tier": self.tier, "bytes_local": self.bytes_local,
                "bytes_peer": self.bytes_peer, "bytes_persistent": self.bytes_persistent}


class TieredCheckpoints:
    def __init__(self, persistent: Checkpointer, local: LocalTier | None,
                 schedule: TierSchedule):
        self.persistent, self.local, self.schedule = persistent, local, schedule

    @classmethod
    def build(cls, job: Any, persistent: Checkpointer, abstract_state: Any,
              mesh: jax.sharding.Mesh, pods: int,
              launch: float | None = None) -> TieredCheckpoints:
        config = job.checkpoint
        local = None
        if config.local is not None:
            local = LocalTier(root_for(config.local, job.name), abstract_state, mesh, pods=pods,
                              launch=launch)
        return cls(persistent, local, TierSchedule.from_config(config, last_step=job.train.steps))

    # -- saving -------------------------------------------------------------------------

    def due(self, step: int) -> frozenset[str]:
        """The schedule's tiers at `step` (the one cadence), the RAM tier only if there is one."""
        tiers = self.schedule.due(step)
        return tiers if self.local is not None else tiers - {LOCAL}

    def save_local(self, step: int, train_state: Any, data_state: dict, ledger: dict) -> None:
        self.local.save(step, train_state, data_state, ledger)

    def discard_after(self, step: int) -> None:
        """After a rollback to `step`: newer steps of both tiers are an abandoned trajectory."""
        self.persistent.discard_after(step)
        if self.local is not None:
            self.local.discard_after(step)

    def wait_until_finished(self) -> None:
        if self.local is not None:
            self.local.wait_until_finished()
        self.persistent.wait_until_finished()

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        self.persistent.close()

    # -- restoring ----------------------------------------------------------------------

    def restore(self, abstract_train_state: Any) -> TieredRestore:
        """The newest complete step of either tier; CheckpointNotFound when neither has one."""
        persistent_steps = self.persistent.steps()
        newest_persistent = max(persistent_steps, default=-1)
        if self.local is not None:
            plan = plan_ram_restore(gather_holdings(self.local),
                                    pods_of_processes(self.local.mesh))
            if plan is not None and plan.step >= newest_persistent:
                ram = restore_from_ram(self.local, plan)
                if jax.process_index() == 0:
                    log.info("restored step %d from the RAM tier (%s: %d bytes local, %d from "
                             "peers)", ram.step, ram.tier, ram.bytes_local, ram.bytes_peer)
                return TieredRestore(ram.step, ram.train_state, ram.data_state, ram.ledger,
                                     ram.tier, bytes_local=ram.bytes_local,
                                     bytes_peer=ram.bytes_peer)
        restored = self.persistent.restore(abstract_train_state)
        return TieredRestore(restored.step, restored.train_state, restored.data_state,
                             restored.ledger, PERSISTENT,
                             bytes_persistent=self._persistent_bytes(restored.step))

    def _persistent_bytes(self, step: int) -> int:
        """The step's size from its manifest: what the restore read (every host's share)."""
        manifest = read_manifest(self.persistent.directory / str(step)) or {}
        return sum(int(entry.get("size", 0)) for entry in manifest.get("files", {}).values())
