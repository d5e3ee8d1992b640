"""A capture's report: every traced host's breakdown (trace.py), side by side, and the straggler.

    build_report(run, first_step)  -> one JSON-able dict (`palm profile --json` prints it)
    format_report(report)          -> the table a user reads

Seconds are per traced step (the mean over the capture). The straggler line compares the
slowest host's step with the median host's: on a pod, one slow host slows every step (the
collectives wait for it), so its name matters more than the mean.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from palm_platform.profile.request import capture_folder, profile_folder
from palm_platform.profile.trace import CATEGORIES, COLLECTIVES, TraceError, host_breakdown


def captures(run: Path) -> list[int]:
    """First steps of the run's captures, oldest first."""
    found = [re.fullmatch(r"step-(\d+)", p.name) for p in profile_folder(run).glob("step-*")]
    return sorted(int(m.group(1)) for m in found if m)


def build_report(run: Path, first: int | None = None) -> dict:
    run = Path(run)
    if first is None:
        taken = captures(run)
        if not taken:
            raise TraceError(f"{run}: no capture yet (take one: palm profile {run})")
        first = taken[-1]
    folder = capture_folder(run, first)
    hosts = sorted(folder.glob("host-*"), key=lambda p: int(p.name.split("-")[1]))
    if not hosts:
        raise TraceError(f"{folder}: no capture starts at step {first} (captures: "
                         f"{', '.join(map(str, captures(run))) or 'none'})")
    breakdowns = [host_breakdown(h) for h in hosts]
    steps = [b.trace_step_s for b in breakdowns]
    median = statistics.median(steps)
    slowest = max(breakdowns, key=lambda b: b.trace_step_s)
    return {
        "run": str(run), "folder": str(folder), "first_step": breakdowns[0].first_step,
        "last_step": breakdowns[0].last_step,
        "hosts": [b.as_dict() for b in breakdowns],
        "straggler": {"host": slowest.host, "step_s": slowest.trace_step_s,
                      "median_step_s": median,
                      "above_median": slowest.trace_step_s / median - 1 if median else 0.0},
    }


def seconds_text(s: float) -> str:
    """Two or three figures: 2.28 s, 312 ms, 4.1 ms, 0.2 ms, 35 us."""
    if s >= 1:
        return f"{s:.2f} s"
    ms = s * 1e3
    if ms < 0.1:
        return f"{ms * 1e3:.0f} us"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def format_report(report: dict) -> str:
    hosts = report["hosts"]
    name = Path(report["run"]).name
    lines = [f"{name}: steps {report['first_step']}-{report['last_step']} traced on "
             f"{len(hosts)} host(s), seconds per step",
             f"  traces: {report['folder']} (tensorboard --logdir it; or open a host's "
             "perfetto_trace.json.gz in ui.perfetto.dev)"]
    width = 11
    head = f"  {'':<34}" + "".join(f"{'host ' + str(h['host']):>{width}}" for h in hosts)
    lines.append(head)

    def row(label: str, values: list[float], share: bool = False) -> str:
        cells = []
        for value, h in zip(values, hosts, strict=True):
            text = seconds_text(value)
            if share and h["trace_step_s"]:
                text += f" {100 * value / h['trace_step_s']:2.0f}%"
            cells.append(f"{text:>{width}}")
        return f"  {label:<34}" + "".join(cells)

    for category in CATEGORIES:
        values = [h["seconds"].get(category, 0.0) for h in hosts]
        if max(values) < 5e-5:
            continue  # nothing of it on any host: the row would be noise
        label = f"{category} (exposed)" if category in COLLECTIVES else category
        lines.append(row(label, values, share=True))
    for kind in COLLECTIVES:
        values = [h["overlapped"].get(kind, 0.0) for h in hosts]
        if max(values) >= 5e-5:
            lines.append(row(f"{kind} beside compute", values))
    lines.append(row("step (trace)", [h["trace_step_s"] for h in hosts]))
    lines.append(row("step (loop's step_s)", [h["measured_step_s"] for h in hosts]))
    s = report["straggler"]
    if len(hosts) > 1:
        lines.append(f"  straggler: host {s['host']}, {seconds_text(s['step_s'])} per step, "
                     f"{100 * s['above_median']:.1f}% above the median host "
                     f"({seconds_text(s['median_step_s'])})")
    if "comparison" in report:
        lines += format_comparison(report)
    return "\n".join(lines)


HOST_SIDE = ("compile", "checkpoint", "data wait", "hooks", "other host")


def compare(report: dict, plan: dict) -> dict:
    """Predicted beside measured (the hosts' mean) per category, with measured/predicted.

    The plan has no host-side time (it predicts the device program), and the trace cannot tell
    the cross-pod all-reduce from the others: those rows have one side only."""
    hosts = report["hosts"]

    def measured(category: str) -> float:
        return sum(h["seconds"].get(category, 0.0) for h in hosts) / len(hosts)

    predicted = plan["seconds"]
    rows: dict[str, dict] = {}
    if "collectives" in predicted:  # a TPU plan: its exposed collectives as one figure
        kinds = {"compute": ("compute",), "collectives": COLLECTIVES}
    else:
        kinds = {"compute": ("compute",), **{k: (k,) for k in COLLECTIVES}, "cross-pod": ()}
    for row, categories in kinds.items():
        m, p = sum(measured(c) for c in categories), predicted.get(row, 0.0)
        if m or p:
            rows[row] = {"predicted_s": p, "measured_s": m if categories else None}
    rows["host side"] = {"predicted_s": 0.0, "measured_s": sum(measured(c) for c in HOST_SIDE)}
    step = statistics.median(h["trace_step_s"] for h in hosts)
    rows["step"] = {"predicted_s": plan["step_s"], "measured_s": step}
    for row in rows.values():
        p, m = row["predicted_s"], row["measured_s"]
        row["ratio"] = m / p if p and m is not None else None
    peak = plan["hardware"]["peak_flops"]
    measured_mfu = plan["formula_flops_per_step"] / (step * plan["devices"] * peak)
    return {"rows": rows, "predicted_mfu": plan["mfu"], "measured_mfu": measured_mfu}


def format_comparison(report: dict) -> list[str]:
    plan, comparison = report["plan"], report["comparison"]
    lines = [f"  held against the plan ({plan['platform']}, {plan['devices']} devices, batch "
             f"{plan['batch']}; the hosts' mean; measured/predicted):",
             f"  {'':<34}{'predicted':>11}{'measured':>11}{'ratio':>9}"]
    for name, row in comparison["rows"].items():
        m = "-" if row["measured_s"] is None else seconds_text(row["measured_s"])
        p = seconds_text(row["predicted_s"]) if row["predicted_s"] else "-"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        lines.append(f"  {name:<34}{p:>11}{m:>11}{ratio:>9}")
    lines.append(f"  {'MFU':<34}{100 * comparison['predicted_mfu']:>10.1f}%"
                 f"{100 * comparison['measured_mfu']:>10.1f}%")
    return lines
