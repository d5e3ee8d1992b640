"""What to do about a loss spike: which checkpoint to restore and which data to skip.

`plan_rollback` is pure: every host calls it with the same spike, the same checkpoint list
(list it after `checkpointer.wait_until_finished()`, so an in-flight save is not counted on
one host and not another), the same ledger and the same recorded data state, and gets the
same plan. The loop then applies it in lock-step:

    plan = plan_rollback(spike, checkpointer.steps(), cfg, ledger,
                         data_state=state_before_batch, batch_size=job.train.batch_size_at(step))
    plan.record(ledger)
    if plan.action == "stop": ... stop with plan.reason
    restored = checkpointer.restore(abstract_state, step=plan.restore_step)
    checkpointer.discard_after(plan.restore_step)
    pipeline.set_state(restored.data_state)
    for start, end in ledger.skip_ranges(): pipeline.add_skip_range(start, end)

Policy, in this order:
1. Recurrence: r = earlier rollbacks whose spike lies within `recurrence_steps` of this one.
   r >= max_rollbacks -> stop; r >= 1 with on_recurrence "stop" -> stop;
   otherwise skip skip_batches x 2^r batches ("widen").
2. Restore target: the newest checkpoint at or before spike.step - rollback_steps. If none is
   that old: the oldest checkpoint at or before the spike step, with a note saying how far
   back it is. If no checkpoint is at or before the spike step: stop (there is nothing clean
   to go back to; save a step-0 checkpoint to always have one).
Checkpoint step k holds the state *before* step k runs, so restoring k and replaying from k
is right even for k == spike.step (rollback_steps: 0).
3. Data: skip from the first sequence the spike's batch read (skips already in the recorded
   state honoured) for skip_batches x the spike step's global batch size sequences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from palm_platform.supervise.config import SpikeConfig
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.positions import first_unskipped
from palm_platform.supervise.spike import Spike


@dataclasses.dataclass(frozen=True)
class RollbackPlan:
    action: Literal["rollback", "stop"]
    spike: Spike
    restore_step: int | None  # None when action == "stop"
    skip_batches: int  # 0 when action == "stop"
    first_sequence: int  # skip global sequences [first_sequence, end_sequence)
    end_sequence: int
    recurrences: int  # earlier rollbacks for spikes within recurrence_steps of this one
    reason: str  # one line, for logs, the ledger and W&B alerts
    note: str = ""  # set when the restore target is not rollback_steps back

    def record(self, ledger: Ledger) -> list[dict]:
        """Write the spike and what was done about it (rollback + skip, or stop) in `ledger`."""
        added = [ledger.record_spike(self.spike)]
        if self.action == "stop":
            added.append(ledger.record_stop(self.spike.step, self.reason))
            return added
        added.append(ledger.record_rollback(self.spike.step, self.restore_step, self.reason,
                                            self.note))
        added.append(ledger.record_skip(self.first_sequence, self.end_sequence, self.spike.step,
                                        self.skip_batches))
        return added


def plan_rollback(
    spike: Spike,
    checkpoint_steps: Sequence[int],
    cfg: SpikeConfig,
    ledger: Ledger,
    *,
    data_state: dict,
    batch_size: int,
) -> RollbackPlan:
    """Decide the response to `spike`; pure (see the module docstring for the policy).

    data_state: `pipeline.get_state()` recorded just before the spike step's batch was read.
    batch_size: the global batch size (sequences) at the spike step.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    first = first_unskipped(data_state)
    nearby = [e["from_step"] for e in ledger.of_kind("rollback")
              if abs(e["from_step"] - spike.step) <= cfg.recurrence_steps]
    r = len(nearby)

    def stop(reason: str) -> RollbackPlan:
        return RollbackPlan("stop", spike, None, 0, first, first, r, reason)

    what = f"spike at step {spike.step} ({spike.describe()})"
    if r >= cfg.max_rollbacks:
        if cfg.max_rollbacks == 0:
            return stop(f"{what}; rollbacks are off (faults.spike.max_rollbacks=0)")
        return stop(
            f"{what} recurs after {r} rollback(s) for spikes within {cfg.recurrence_steps} "
            f"steps (at steps {nearby}), the limit faults.spike.max_rollbacks="
            f"{cfg.max_rollbacks}; inspect the data from sequence {first} and the model state"
        )
    if r >= 1 and cfg.on_recurrence == "stop":
        return stop(
            f"{what} recurs after rollback(s) for spikes at steps {nearby} (within "
            f"{cfg.recurrence_steps} steps) and faults.spike.on_recurrence is 'stop'"
        )

    before = sorted(s for s in checkpoint_steps if s <= spike.step)
    if not before:
        return stop(
            f"{what}: no checkpoint at or before step {spike.step} to roll back to "
            f"(checkpoints: {sorted(checkpoint_steps)}). Fix: save a checkpoint at step 0"
        )
    target = spike.step - cfg.rollback_steps
    old_enough = [s for s in before if s <= target]
    note = ""
    if old_enough:
        restore = old_enough[-1]
    else:
        restore = before[0]
        note = (f"no checkpoint {cfg.rollback_steps} steps before the spike; used the oldest, "
                f"step {restore}, {spike.step - restore} steps back")

    skip_batches = cfg.skip_batches * 2**r
    reason = what
    if r:
        reason += f"; recurrence {r} near steps {nearby}: skip widened to {skip_batches} batches"
    return RollbackPlan("rollback", spike, restore, skip_batches, first,
                        first + skip_batches * batch_size, r, reason, note)
