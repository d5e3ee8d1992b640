"""`palm status RUN_DIR` and the terminal view of a running job: progress and summary.

Both read the run folder's metrics.jsonl (written by process 0), so they work the same for
a job running now, a finished one, or one watched from another terminal.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from palm_platform.metrics.events import describe_event, eval_text
from palm_platform.metrics.sink import read_records
from palm_platform.run_dir import RunDir

OVERHEAD_BOUND_S = 0.05  # a step with less arithmetic than this at peak is overhead-bound


@dataclass
class Summary:
    steps: int
    total_steps: int | None
    tokens: int
    wall_s: float
    productive_s: float
    goodput: float
    restarts: int
    rollbacks: int
    skipped_batches: int
    final_loss: float | None
    checkpoints: int
    badput_s: dict[str, float] = field(default_factory=dict)
    mfu: float | None = None  # mean over steps that did not compile
    step_s: float | None = None
    compute_s: float | None = None  # the step's FLOPs at the devices' peak
    last_eval: dict | None = None  # the newest `eval` record (held-out loss, bpb per source)
    pods: int | None = None  # pods of the newest step (elastic jobs change it)
    resizes: int = 0

    def lines(self) -> list[str]:
        done = f"{self.steps}" + (f"/{self.total_steps}" if self.total_steps else "")
        loss = f"{self.final_loss:.4f}" if self.final_loss is not None else "-"
        lines = [
            f"steps {done}  tokens {self.tokens:,}  final loss {loss}",
            f"wall {self.wall_s:.1f} s  productive {self.productive_s:.1f} s  goodput "
            f"{self.goodput:.1%}",
        ]
        causes = sorted(((s, c) for c, s in self.badput_s.items() if s >= 0.05), reverse=True)
        if causes:
            lines.append("badput: " + ", ".join(f"{c} {s:.1f} s" for s, c in causes))
        lines.append(f"restarts {self.restarts}  rollbacks {self.rollbacks}  skipped batches "
                     f"{self.skipped_batches}  checkpoints saved {self.checkpoints}")
        if self.resizes or (self.pods or 0) > 1:
            lines.append(f"pods {self.pods} now  resizes {self.resizes}")
        if self.last_eval:
            lines.append(
                f"held-out eval at step {self.last_eval['step']}: {eval_text(self.last_eval)}"
            )
        if self.mfu is not None:
            lines.append(self.mfu_line())
        return lines

    def mfu_line(self) -> str:
        line = f"MFU {self.mfu:.1%} at {self.step_s * 1e3:.0f} ms per step"
        if self.compute_s is not None and self.compute_s < OVERHEAD_BOUND_S:
            # A tiny model's step is a few ms of arithmetic: dispatch, collectives and the
            # host dominate, so MFU says nothing about the platform here.
            line += (f" (overhead-bound: the step's FLOPs take {self.compute_s * 1e3:.1f} ms at "
                     "peak; MFU means something for real model sizes)")
        return line


def _profiled_steps(records: list[dict]) -> set[int]:
    """The steps a profiler capture traced (its `profile` event: first to `last_step`) and
    the step after, which carries the traces' write: not normal steps for the MFU."""
    return {step for r in records if r["kind"] == "profile"
            for step in range(r["step"], r.get("last_step", r["step"]) + 2)}


def summarize(records: list[dict], total_steps: int | None = None) -> Summary:
    steps = [r for r in records if r["kind"] == "step"]
    # A step recomputed after a restart or rollback counts once in progress, every time in wall.
    final = {r["step"]: r for r in steps}
    first_time = min((r["time"] for r in records), default=0.0)
    last_time = max((r["time"] for r in records), default=0.0)
    productive = sum(r.get("step_s", 0.0) for r in final.values())
    wall = max(last_time - first_time, 0.0)
    goodput_events = [r for r in records if r["kind"] == "goodput"]
    badput: dict[str, float] = {}
    if goodput_events:  # the run's own accounting (start-up, compile, restarts, recomputation)
        last = goodput_events[-1]
        productive, wall = last["productive_s"], last["wall_s"]
        badput = {k[len("badput_"):-len("_s")]: v for k, v in last.items()
                  if k.startswith("badput_") and k.endswith("_s")}
    profiled = _profiled_steps(records)
    timed = [r for r in final.values() if not r.get("compiled") and "mfu" in r and r.get("step_s")
             and r["step"] not in profiled]
    mfu = step_s = compute_s = None
    if timed:  # FLOPs over time, not a mean of per-step ratios: the loop reads results a
        # step late, so single step times shift between neighbours; their sum does not
        step_s = sum(r["step_s"] for r in timed) / len(timed)
        compute_s = sum(r["mfu"] * r["step_s"] for r in timed) / len(timed)
        mfu = compute_s / step_s
    return Summary(
        steps=max(final, default=0), total_steps=total_steps,
        tokens=int(sum(r.get("tokens", 0) for r in final.values())),
        wall_s=wall, productive_s=productive,
        goodput=productive / wall if wall > 0 else 0.0,
        restarts=sum(r["kind"] == "restart" for r in records),
        rollbacks=sum(r["kind"] == "rollback" for r in records),
        skipped_batches=int(sum(r.get("batches", 0) for r in records if r["kind"] == "skip")),
        final_loss=steps[-1]["loss"] if steps else None,
        checkpoints=sum(r["kind"] == "checkpoint_saved" for r in records),
        badput_s=badput, mfu=mfu, step_s=step_s, compute_s=compute_s,
        last_eval=next((r for r in reversed(records) if r["kind"] == "eval"), None),
        pods=steps[-1].get("pods") if steps else None,
        resizes=sum(r["kind"] == "resize" for r in records),
    )


def print_summary(run_dir: Path, total_steps: int | None = None) -> Summary:
    from rich.console import Console

    records = read_records(run_dir)
    summary = summarize(records, total_steps)
    console = Console(soft_wrap=True)  # one line per item, whatever the terminal's width
    console.print(f"[bold]run {run_dir}[/bold]")
    for line in summary.lines():
        console.print("  " + line)
    from palm_platform.data.quality import EVENT, describe
    from palm_platform.yaml_safe import one_line

    quality = [r for r in records if r["kind"] == EVENT]
    if quality:  # the newest launch's count (each launch reports its pipeline once)
        console.print("  " + one_line(describe(quality[-1]), 300), markup=False, soft_wrap=True)
    events = [
        r
        for r in records
        # checkpoint_restored: which tier each restore read, and why a newer RAM step was not
        if r["kind"] in ("restart", "checkpoint_restored", "compiled", "spike", "rollback",
                         "skip", "stop")
    ]
    for r in events[-12:]:
        console.print("  " + describe_event(r), highlight=False)
    return summary


# Event kinds the live view does not print as a line (the bar shows them): every other event
# record gets its sentence from the driver, so a worker need not log it too (ray/worker.py).
ON_THE_BAR = frozenset({"step", "checkpoint_saved"})


class Progress:
    """A rich progress bar fed by the metrics file while a job runs."""

    def __init__(self, run_dir: Path, total_steps: int,
                 restart_cause: Callable[[], str | None] | None = None):
        self.path, self.total = RunDir(Path(run_dir)).metrics, total_steps
        # What died before a restart, in one line (ray/worker_output.py), for its sentence.
        self.restart_cause = restart_cause

    def follow(self, stop: threading.Event) -> None:
        import json

        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        offset = self.path.stat().st_size if self.path.exists() else 0
        columns = (
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn(
                "loss {task.fields[loss]}  {task.fields[tps]} tok/s  checkpoint {task.fields[ckpt]}"
            ),
            TimeRemainingColumn(),
        )
        with Bar(*columns, transient=False) as bar:
            task = bar.add_task("train", total=self.total, loss="-", tps="-", ckpt="-")
            stopping = False
            while not stopping:
                # Once stopped, one last read: the lines written since the previous poll (the
                # last steps, the goodput of a run stopped on Ctrl-C) are printed too.
                stopping = stop.wait(0.5)
                if not self.path.exists():
                    continue
                with self.path.open() as f:
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind("\n") + 1]
                offset += len(complete.encode())
                for line in complete.splitlines():
                    record = json.loads(line)
                    if record["kind"] == "step":
                        bar.update(task, completed=record["step"], loss=f"{record['loss']:.3f}",
                                   tps=f"{record['tokens_per_s']:.0f}")
                    elif record["kind"] == "checkpoint_saved":
                        # routine: on the bar, not a line each
                        bar.update(task, ckpt=str(record["step"]))
                    elif record["kind"] == "eval":
                        bar.console.print(f"step {record['step']}: held-out {eval_text(record)}",
                                          soft_wrap=True)
                    else:
                        bar.console.print(self._sentence(record), highlight=False, soft_wrap=True)

    def _sentence(self, record: dict) -> str:
        sentence = describe_event(record)
        if record["kind"] == "restart" and self.restart_cause is not None:
            cause = self.restart_cause()
            if cause:
                sentence += f"; {cause}"
        return sentence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a job's run folder (RUN_DIR/NAME, holds metrics.jsonl)")


def main(args: argparse.Namespace) -> int:
    import sys

    if str(args.run_dir).startswith("gs://"):
        from palm_platform.storage.preflight import StorageConfigError, check_gcs_paths

        try:  # credentials and network first: those are what a user needs to hear about
            check_gcs_paths({"run_dir": args.run_dir})
        except StorageConfigError as error:
            print(f"palm status: {error}", file=sys.stderr)
            return 2
        print(f"palm status: {args.run_dir}: a run folder is local (metrics.jsonl is appended "
              "line by line; only checkpoints and data go to gs://). Fix: pass the run folder "
              "on the machine that ran the job, or `palm ckpt list` for a gs:// checkpoint "
              "directory", file=sys.stderr)
        return 2
    try:
        print_summary(Path(args.run_dir))
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    return 0
