"""Which checkpoint tiers are due at a step: the one place the save cadence is decided.

    schedule = TierSchedule.from_config(job.checkpoint, last_step=job.train.steps)
    schedule.due(step)   # frozenset of "persistent" / "local"

The persistent tier (`checkpoint.every_steps`, gs:// on pods) and the RAM tier
(`checkpoint.local.every_steps`, /dev/shm) keep their own cadences; the last step of a run
is saved persistently whatever its number, so a finished run leaves a checkpoint behind.
A preemption notice saves both tiers at the hosts' agreed step (supervise/preemption.py);
this object holds only the regular cadence.
"""

from __future__ import annotations

from dataclasses import dataclass

from palm_platform.checkpoint.config import CheckpointConfig

PERSISTENT, LOCAL = "persistent", "local"


@dataclass(frozen=True)
class TierSchedule:
    persistent_every: int
    local_every: int | None  # None: no RAM tier
    last_step: int | None = None

    @classmethod
    def from_config(cls, config: CheckpointConfig, *, last_step: int | None = None
                    ) -> TierSchedule:
        local = config.local.every_steps if config.local is not None else None
        return cls(config.every_steps, local, last_step)

    def due(self, step: int) -> frozenset[str]:
        """The tiers to save after `step` (step 0, the initial state, is saved by the caller)."""
        tiers = set()
        if step % self.persistent_every == 0 or step == self.last_step:
            tiers.add(PERSISTENT)
        if self.local_every is not None and step % self.local_every == 0:
            tiers.add(LOCAL)
        return frozenset(tiers)
