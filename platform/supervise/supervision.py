"""The supervision state of a run: the ledger and the spike detector, saved with every checkpoint.

Deterministic on every host (all see the same global loss), so every host applies the same
skips after a restart. The rollback and the restore that use it are the train loop's
(train/recovery.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from palm_platform.supervise.config import SpikeConfig
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.spike import SpikeDetector


@dataclass
class Supervision:
    ledger: Ledger
    detector: SpikeDetector
    ledger_path: Path  # the run folder's copy (RunDir.ledger): holds rollbacks after a save
    writes: bool  # process 0 writes the run folder's files; the others read them
    rolled_back_s: float = 0.0  # a restart's lost steps that the goodput file had counted

    @classmethod
    def new(cls, spike: SpikeConfig, ledger_path: Path, *, writes: bool) -> Supervision:
        return cls(Ledger(), SpikeDetector(spike), ledger_path, writes)

    def checkpoint_item(self, pods: int, *, agreed: bool = False) -> dict:
        """What a checkpoint saves besides the train state and the data position. `agreed`:
        the hosts' agreed step of a notice (a preemption, a planned removal, a grow-back), so
        a restore onto fewer pods from it is a planned removal, not a lost pod."""
        item = {"ledger": self.ledger.to_dict(), "spike_detector": self.detector.state_dict(),
                "pods": pods}
        if agreed:
            item["agreed"] = True
        return item

    def save_ledger(self) -> None:
        if self.writes:  # one writer; the others read it through broadcast
            self.ledger.save(self.ledger_path)
