"""The run's ledger: every spike, rollback, skipped data range, restart and stop.

One append-only list of JSON events. It is saved with each checkpoint (the `ledger` item)
and to the run directory after every event; after a restart the data pipeline re-applies
`skip_ranges()` so skipped data stays skipped even when the restored checkpoint predates
the rollback. Every host records the same events (the decisions are deterministic), so any
host's copy is the ledger.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from palm_platform.supervise.spike import Spike

LEDGER_VERSION = 1
KINDS = ("spike", "rollback", "skip", "restart", "stop")


class Ledger:
    def __init__(self, events: list[dict] | None = None):
        self.events: list[dict] = [dict(e) for e in events or []]

    # -- recording ----------------------------------------------------------------------

    def record_spike(self, spike: Spike) -> dict:
        return self._add({"kind": "spike", **spike.to_dict(), "text": spike.describe()})

    def record_rollback(self, from_step: int, to_step: int, reason: str, note: str = "") -> dict:
        """Training at `from_step` (the spike) went back to checkpoint `to_step`."""
        return self._add({"kind": "rollback", "from_step": int(from_step),
                          "to_step": int(to_step), "reason": reason, "note": note})

    def record_skip(self, first_sequence: int, end_sequence: int, step: int, batches: int) -> dict:
        """Global sequences [first_sequence, end_sequence) are never trained on."""
        if not 0 <= first_sequence <= end_sequence:
            raise ValueError(f"bad skip range [{first_sequence}, {end_sequence})")
        return self._add({"kind": "skip", "first_sequence": int(first_sequence),
                          "end_sequence": int(end_sequence), "step": int(step),
                          "batches": int(batches)})

    def record_restart(self, step: int, cause: str) -> dict:
        """The worker group restarted and resumed from checkpoint `step`."""
        return self._add({"kind": "restart", "step": int(step), "cause": cause})

    def record_stop(self, step: int, reason: str) -> dict:
        """Escalation: the run stops at `step` instead of rolling back again."""
        return self._add({"kind": "stop", "step": int(step), "reason": reason})

    def _add(self, event: dict) -> dict:
        self.events.append(event)
        return event

    # -- queries ------------------------------------------------------------------------

    def of_kind(self, kind: str) -> list[dict]:
        if kind not in KINDS:
            raise ValueError(f"unknown ledger event kind {kind!r}; kinds are {KINDS}")
        return [e for e in self.events if e["kind"] == kind]

    @property
    def rollbacks(self) -> int:
        return len(self.of_kind("rollback"))

    @property
    def spikes(self) -> int:
        return len(self.of_kind("spike"))

    @property
    def stopped(self) -> dict | None:
        stops = self.of_kind("stop")
        return stops[-1] if stops else None

    def skip_ranges(self) -> list[tuple[int, int]]:
        """[first, end) global sequence ranges to re-apply with `pipeline.add_skip_range`."""
        return [(e["first_sequence"], e["end_sequence"]) for e in self.of_kind("skip")]

    # -- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Strict JSON (non-finite losses are written as strings)."""
        return {"version": LEDGER_VERSION, "events": [_json_safe(e) for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict | None) -> Ledger:
        """Accepts `to_dict` output, or None/{} (a checkpoint saved without a ledger)."""
        if not data:
            return cls()
        if not isinstance(data, dict) or not isinstance(data.get("events"), list):
            raise ValueError(f"not a ledger (expected {{'version', 'events': [...]}}): {data!r}")
        for event in data["events"]:
            if not isinstance(event, dict) or event.get("kind") not in KINDS:
                raise ValueError(f"ledger event of unknown kind: {event!r}; kinds are {KINDS}")
        return cls(data["events"])

    def save(self, path: str | Path) -> None:
        """Atomic write (temp file + rename), so a crash leaves the old or the new ledger."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Ledger:
        """The ledger at `path`, or an empty one if there is none yet."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError) as error:
            raise ValueError(
                f"{path}: unreadable ledger ({error}). Fix: restore it from the newest "
                f"checkpoint's ledger item, or delete it to start a new ledger"
            ) from error

    def merge(self, other: Ledger) -> Ledger:
        """self's events, then other's that self lacks (checkpoint ledger + run-dir ledger)."""
        seen = {json.dumps(_json_safe(e), sort_keys=True) for e in self.events}
        merged = Ledger(self.events)
        for event in other.events:
            key = json.dumps(_json_safe(event), sort_keys=True)
            if key not in seen:
                seen.add(key)
                merged.events.append(dict(event))
        return merged

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ledger) and self.to_dict() == other.to_dict()

    def __len__(self) -> int:
        return len(self.events)


def _json_safe(event: dict) -> dict:
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in event.items()}
