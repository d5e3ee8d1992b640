"""`palm status RUN_DIR` and the terminal view of a running job: progress and summary.

Both read the run folder's metrics.jsonl (written by process 0), so they work the same for
a job running now, a finished one, or one watched from another terminal.
"""

from __future__ import annotations

import argparse
import threading
from dataclasses import dataclass
from pathlib import Path

from palm_platform.metrics import METRICS_FILE, read_records


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
    last_eval: dict | None = None  # the newest `eval` record (held-out loss, bpb per source)

    def lines(self) -> list[str]:
        done = f"{self.steps}" + (f"/{self.total_steps}" if self.total_steps else "")
        loss = f"{self.final_loss:.4f}" if self.final_loss is not None else "-"
        return [
            f"steps {done}  tokens {self.tokens:,}  final loss {loss}",
            f"wall {self.wall_s:.1f} s  productive {self.productive_s:.1f} s  goodput {self.goodput:.1%}",
            f"restarts {self.restarts}  rollbacks {self.rollbacks}  skipped batches "
            f"{self.skipped_batches}  checkpoints saved {self.checkpoints}",
        ] + ([f"held-out eval at step {self.last_eval['step']}: {eval_text(self.last_eval)}"]
             if self.last_eval else [])


def eval_text(record: dict) -> str:
    """`code loss 5.12 bpb 1.83, docs ...` from an `eval` record's eval/<source>/<metric>."""
    per_source: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        if key.startswith("eval/"):
            _, source, metric = key.split("/", 2)
            per_source.setdefault(source, {})[metric] = value
    return ", ".join(f"{source} loss {m.get('loss', float('nan')):.3f} bpb {m.get('bpb', float('nan')):.3f}"
                     for source, m in per_source.items())


def summarize(records: list[dict], total_steps: int | None = None) -> Summary:
    steps = [r for r in records if r["kind"] == "step"]
    # A step recomputed after a restart or rollback counts once in progress, every time in wall.
    final = {r["step"]: r for r in steps}
    first_time = min((r["time"] for r in records), default=0.0)
    last_time = max((r["time"] for r in records), default=0.0)
    productive = sum(r.get("step_s", 0.0) for r in final.values())
    wall = max(last_time - first_time, 0.0)
    goodput_events = [r for r in records if r["kind"] == "goodput"]
    if goodput_events:  # the run's own accounting (start-up, compile, restarts, recomputation)
        productive, wall = goodput_events[-1]["productive_s"], goodput_events[-1]["wall_s"]
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
        last_eval=next((r for r in reversed(records) if r["kind"] == "eval"), None),
    )


def print_summary(run_dir: Path, total_steps: int | None = None) -> Summary:
    from rich.console import Console

    records = read_records(run_dir)
    summary = summarize(records, total_steps)
    console = Console()
    console.print(f"[bold]run {run_dir}[/bold]")
    for line in summary.lines():
        console.print("  " + line)
    events = [r for r in records if r["kind"] in ("spike", "rollback", "skip", "stop")]
    for r in events[-10:]:
        fields = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("kind", "time", "step"))
        console.print(f"  step {r['step']}: {r['kind']} {fields}")
    return summary


class Progress:
    """A rich progress bar fed by the metrics file while a job runs."""

    def __init__(self, run_dir: Path, total_steps: int):
        self.path, self.total = Path(run_dir) / METRICS_FILE, total_steps

    def follow(self, stop: threading.Event) -> None:
        import json

        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        offset = self.path.stat().st_size if self.path.exists() else 0
        columns = (TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                   TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"), TimeRemainingColumn())
        with Bar(*columns, transient=False) as bar:
            task = bar.add_task("train", total=self.total, loss="-", tps="-")
            while not stop.wait(0.5):
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
                    elif record["kind"] == "eval":
                        bar.console.print(f"step {record['step']}: held-out {eval_text(record)}")
                    else:
                        bar.console.print(f"step {record['step']}: {record['kind']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a job's run folder (RUN_DIR/NAME, holds metrics.jsonl)")


def main(args: argparse.Namespace) -> int:
    import sys

    try:
        print_summary(Path(args.run_dir))
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    return 0
