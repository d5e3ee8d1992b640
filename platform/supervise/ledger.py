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
from typing import TYPE_CHECKING

from palm_platform.supervise.spike import Spike

if TYPE_CHECKING:
    from palm_platform.supervise.rollback import RollbackPlan

LEDGER_VERSION = 1
KINDS = ("spike", "rollback", "skip", "restart", "stop", "resize")


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

    def record_resize(self, step: int, *, from_pods: int, to_pods: int, cause: str) -> dict:
        """Elastic pods: training resumed at checkpoint `step` on another number of pods."""
        return self._add({"kind": "resize", "step": int(step), "from_pods": int(from_pods),
                          "to_pods": int(to_pods), "cause": cause})

    def record_stop(self, step: int, reason: str) -> dict:
        """Escalation: the run stops at `step` instead of rolling back again."""
        return self._add({"kind": "stop", "step": int(step), "reason": reason})

    def record_plan(self, plan: RollbackPlan) -> list[dict]:
        """The spike and what was done about it (rollback + skip, or stop)."""
        added = [self.record_spike(plan.spike)]
        if plan.action == "stop":
            added.append(self.record_stop(plan.spike.step, plan.reason))
            return added
        added.append(self.record_rollback(plan.spike.step, plan.restore_step, plan.reason,
                                          plan.note))
        added.append(self.record_skip(plan.first_sequence, plan.end_sequence, plan.spike.step,
                                      plan.skip_batches))
        return added

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

    # -- text ---------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        """One line per handled spike, restart, resize or stop, for `palm status` and the run end."""
        lines, used = [], set()
        for i, event in enumerate(self.events):
            if i in used:
                continue
            kind = event["kind"]
            if kind == "spike":
                line = f"step {event['step']}: {event['text']}"
                for j in range(i + 1, len(self.events)):
                    other = self.events[j]
                    if other["kind"] == "spike" or j in used:
                        break
                    if other["kind"] == "rollback" and other["from_step"] == event["step"]:
                        line += f" -> rolled back to step {other['to_step']}"
                        if other["note"]:
                            line += f" ({other['note']})"
                    elif other["kind"] == "skip" and other["step"] == event["step"]:
                        line += (f", skipped sequences [{other['first_sequence']}, "
                                 f"{other['end_sequence']}) ({other['batches']} batches)")
                    elif other["kind"] == "stop" and other["step"] == event["step"]:
                        line += f" -> stopped: {other['reason']}"
                    else:
                        break
                    used.add(j)
                lines.append(line)
            elif kind == "rollback":
                lines.append(f"step {event['from_step']}: rolled back to step {event['to_step']}"
                             f" ({event['reason']})")
            elif kind == "skip":
                lines.append(f"step {event['step']}: skipped sequences [{event['first_sequence']},"
                             f" {event['end_sequence']}) ({event['batches']} batches)")
            elif kind == "restart":
                lines.append(f"step {event['step']}: restarted ({event['cause']})")
            elif kind == "stop":
                lines.append(f"step {event['step']}: stopped: {event['reason']}")
            elif kind == "resize":
                lines.append(f"step {event['step']}: resized from {event['from_pods']} to "
                             f"{event['to_pods']} pod(s) ({event['cause']})")
        return lines

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
