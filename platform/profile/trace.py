"""One host's trace -> where each traced step's wall time went, by category.

Reads the Perfetto JSON that `jax.profiler.stop_trace` writes beside TensorBoard's .xplane.pb
(`perfetto_trace.json.gz`, Chrome trace-event format: the standard library parses it) and the
host's `steps.json` (capture.py). The capture's window runs from the marker of step S-1 to the
marker of its last step (the loop's `step_s` of those steps, summed); each instant of it goes
to exactly one category, the first that is busy then:

    compute          a device runs an XLA op that is not a collective
    <collective>     only collectives run: all-gather, reduce-scatter, all-reduce, all-to-all,
                     collective-permute (exposed communication; the part of each collective that
                     ran beside compute is its `overlap`)
    compile          the host compiles (XLA or JAX's tracing/lowering)
    checkpoint       the host is in a checkpoint save or wait
    data wait        the host waits for the next batch (train/prefetch.py)
    hooks            the host runs a hook (metrics, supervision, eval, ...)
    other host       anything else: dispatch, Python, waiting on a collective's peers

so the categories add up to the window by construction. Device ops are events with an
`hlo_op` argument (CPU: on the PjRt client's threads, one op per device thread) or events on a
`/device:` process (TPU: the "XLA Ops" line). On CPU the collectives are the same HLO names as
on TPU (`all-gather`, `all-reduce.3`); CPU fusions are `fusion`/`ynn_fusion`, TPU's `fusion`,
`convolution`, ... Host categories come from the Python tracer's function events
("$prefetch.py:NN next"), which jax.profiler records by default, on the loop's own thread
(the one with the step markers): background threads (an async checkpoint's commit, the
prefetcher) cost the step nothing unless the loop waits for them. The trace does not say which
all-reduce crosses pods: the cross-pod exchange is in `all-reduce` here (the plan names it).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

STEP_MARK = "palm step "  # + the step number: capture.py's marker events, one per read step
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# Host categories: substrings of the Python tracer's function names (file and function).
HOST_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("compile", ("compile", "lower_sharding_computation", "trace_to_jaxpr")),
    ("checkpoint", ("checkpoint", "orbax")),
    ("data wait", ("prefetch.py",)),
    ("hooks", ("hooks.py", "heartbeat.py", "sink.py", "goodput.py", "heldout.py")),
)
CATEGORIES = ("compute", *COLLECTIVES, *(name for name, _ in HOST_RULES), "other host")
_SUFFIX = re.compile(r"(-start|-done|-update)?(\.\d+)*$")


class TraceError(ValueError):
    """A capture folder without a trace or its steps file (it names the folder)."""


def collective_kind(op: str) -> str | None:
    """`all-reduce.3`, `all-gather-start.1` -> their kind; a compute op -> None."""
    base = _SUFFIX.sub("", op)
    return base if base in COLLECTIVES else None


def merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]):
    """Both sorted and merged."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def difference(a: list[tuple[float, float]], b: list[tuple[float, float]]):
    """a minus b, both sorted and merged."""
    out, j = [], 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k, cursor = j, start
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cursor:
                out.append((cursor, b[k][0]))
            cursor = max(cursor, b[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return out


@dataclass
class HostBreakdown:
    """Seconds per traced step, per category, on one host."""

    host: int
    first_step: int
    last_step: int
    measured_step_s: float  # the loop's own step_s, mean over the traced steps
    trace_step_s: float  # the window in the trace, per step (the categories add up to it)
    seconds: dict[str, float] = field(default_factory=dict)
    overlapped: dict[str, float] = field(default_factory=dict)  # collective time beside compute

    @property
    def steps(self) -> int:
        return self.last_step - self.first_step + 1

    def as_dict(self) -> dict:
        return {"host": self.host, "first_step": self.first_step, "last_step": self.last_step,
                "measured_step_s": self.measured_step_s, "trace_step_s": self.trace_step_s,
                "seconds": self.seconds, "overlapped": self.overlapped}


def trace_file(host_folder: Path) -> Path:
    found = sorted(Path(host_folder).glob("plugins/profile/*/*perfetto_trace.json.gz"))
    if not found:
        raise TraceError(f"{host_folder}: no perfetto_trace.json.gz (was the capture cut short?)")
    return found[-1]


def load_events(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _device_pids(events: list[dict]) -> set:
    return {e.get("pid") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
            and str(e.get("args", {}).get("name", "")).startswith("/device:")}


def breakdown(events: list[dict], marks: list[dict], host: int = 0) -> HostBreakdown:
    """The categories of the window between the first and last step markers (module doc)."""
    at = {int(e["name"][len(STEP_MARK):]): float(e["ts"]) for e in events
          if e.get("ph") == "X" and str(e.get("name", "")).startswith(STEP_MARK)}
    steps = [m["step"] for m in marks]
    if len(steps) < 2 or any(s not in at for s in steps):
        raise TraceError(f"the trace lacks the step markers of steps {steps[0]}-{steps[-1]}")
    window = [(at[steps[0]], at[steps[-1]])]
    loop_thread = next(e.get("tid") for e in events if e.get("ph") == "X"
                       and str(e.get("name", "")).startswith(STEP_MARK))
    devices = _device_pids(events)
    busy: dict[str, list[tuple[float, float]]] = {name: [] for name in CATEGORIES}
    for e in events:
        if e.get("ph") != "X" or not e.get("dur"):
            continue
        span = (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        name = str(e.get("name", ""))
        args = e.get("args") or {}
        if "hlo_op" in args or e.get("pid") in devices:
            busy[collective_kind(str(args.get("hlo_op", name))) or "compute"].append(span)
            continue
        if e.get("tid") != loop_thread:  # background threads (async saves, prefetch) overlap
            continue
        for category, needles in HOST_RULES:
            if any(n in name for n in needles):
                busy[category].append(span)
                break
    n = len(steps) - 1
    covered: list[tuple[float, float]] = []
    seconds: dict[str, float] = {}
    compute = intersection(merged(busy["compute"]), window)
    overlapped = {}
    for category in CATEGORIES[:-1]:
        mine = intersection(merged(busy[category]), window)
        if category in COLLECTIVES and mine:
            overlapped[category] = length(intersection(mine, compute)) / 1e6 / n
        seconds[category] = length(difference(mine, covered)) / 1e6 / n
        covered = merged(covered + mine)
    total = length(window)
    seconds["other host"] = (total - length(covered)) / 1e6 / n
    measured = [m["step_s"] for m in marks[1:] if m.get("step_s") is not None]
    return HostBreakdown(host, steps[1], steps[-1], sum(measured) / max(len(measured), 1),
                         total / 1e6 / n, seconds, overlapped)


def host_breakdown(host_folder: Path) -> HostBreakdown:
    try:
        meta = json.loads((Path(host_folder) / "steps.json").read_text())
    except (OSError, ValueError) as error:
        raise TraceError(f"{host_folder}: no readable steps.json ({error})") from None
    return breakdown(load_events(trace_file(host_folder)), meta["marks"], meta["host"])
