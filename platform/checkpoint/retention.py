"""Retention built for loss-spike rollback, as Orbax preservation policies.

Kept = newest K  ∪  the rollback window  ∪  every M-th step. The rollback window is every
checkpoint at most R steps older than the newest, plus the newest one at least R steps older
(the anchor): a spike found at any step s >= newest can then roll back to the newest
checkpoint at or before s - R. Orbax applies the policy when a save finalises, after the new
checkpoint is committed, so the policy always sees the new step and never deletes the only
good copy before its replacement exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from orbax.checkpoint import checkpoint_managers as ocm

from palm_platform.checkpoint.config import CheckpointConfig


@dataclasses.dataclass
class RollbackWindow(ocm.PreservationPolicy):
    """Preserve every checkpoint needed to roll back at least `rollback_steps`."""

    rollback_steps: int

    def should_preserve(self, checkpoints: Sequence, *, context) -> Sequence[bool]:
        if not checkpoints:
            return []
        newest = max(c.step for c in checkpoints)
        horizon = newest - self.rollback_steps
        anchor = max((c.step for c in checkpoints if c.step <= horizon), default=None)
        return [c.step >= horizon or c.step == anchor for c in checkpoints]


def preservation_policy(config: CheckpointConfig) -> ocm.PreservationPolicy:
    policies: list[ocm.PreservationPolicy] = [
        ocm.LatestN(n=config.keep_last),
        RollbackWindow(rollback_steps=config.rollback_steps),
    ]
    if config.keep_every is not None:
        policies.append(ocm.EveryNSteps(interval_steps=config.keep_every))
    return ocm.AnyPreservationPolicy(policies)

