"""`palm plan JOB --compare FLAGS`: the job's plan and the plan with FLAGS, side by side.

Both columns come from programs compiled here for the job's topology (report.py); the figures
are predictions from the compiled schedule, not measurements. Rows: step time as scheduled
(and best case), MFU, per-chip memory, and the collectives the schedule leaves exposed, by
network and kind, so a flag can be tried before a pod-hour is spent on it.
"""

from __future__ import annotations

from palm_platform.plan.step_time import format_seconds


def _gib(n: float) -> str:  # as the plan's own memory line
    return f"{n / 2**30:.2f} GiB"


def _seconds(s: float) -> str:
    return format_seconds(s)


def _exposed(report) -> dict[str, float]:
    return dict(report._exposed_seconds())


def comparison(base, other, flags_text: str) -> str:
    """A table of `base` (the job's flags) against `other` (with `flags_text` over them)."""
    if not base.step_time or not other.step_time:  # a side refused or unreadable: memory only
        rows = [("memory per chip", _gib(base.per_chip_bytes), _gib(other.per_chip_bytes))]
    else:
        t, u = base.step_time, other.step_time
        rows = [
            ("step time as scheduled", _seconds(t["scheduled_s"]), _seconds(u["scheduled_s"])),
            ("MFU as scheduled", f"{base.mfu_range['scheduled']:.1%}",
             f"{other.mfu_range['scheduled']:.1%}"),
            ("step time best case", _seconds(t["best_s"]), _seconds(u["best_s"])),
            ("memory per chip", _gib(base.per_chip_bytes), _gib(other.per_chip_bytes)),
            ("exposed collectives", _seconds(t["exposed_s"]), _seconds(u["exposed_s"])),
        ]
        exposed_base, exposed_other = _exposed(base), _exposed(other)
        for key in sorted(set(exposed_base) | set(exposed_other),
                          key=lambda k: -max(exposed_base.get(k, 0), exposed_other.get(k, 0))):
            network, kind = key.split("/", 1)
            rows.append((f"  exposed {network.upper()} {kind}", _seconds(exposed_base.get(key, 0)),
                         _seconds(exposed_other.get(key, 0))))
    rows.append(("fits in HBM", "yes" if base.fits else "NO", "yes" if other.fits else "NO"))
    width = max(len(r[0]) for r in rows) + 2
    column = max(12, *(len(r[1]) + 2 for r in rows))
    lines = [
        f"compare (predictions from the compiled schedules): the job's flags vs + {flags_text}",
        f"  {'':<{width}}{'job':<{column}}+ flags",
    ]
    lines += [f"  {name:<{width}}{a:<{column}}{b}" for name, a, b in rows]
    return "\n".join(lines)
