"""`palm data sample JOB.yaml --step S [--process P] [--rows K]`: what step S's batch holds.

Answers "what did the model see at the spike?" from the token store alone: a batch is a
pure function of (seed, global sequence indices, skip ranges), so step S's rows are index
arithmetic (the batch-size schedule gives the first sequence; the run's skip ranges move
it) followed by reading those windows. Nothing is built: no tokenising (a store that is not
current is an error), no JAX device, no checkpoint.

    the job's batch schedule      -> k = sequences before step S
    RUN_DIR/NAME/ledger.json      -> skip ranges (none without a run folder)
    k-th unskipped sequence       -> the global batch's indices; process P's slice
    the store (and the run's held-out split, eval_split.json) -> windows -> decoded text
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from palm_platform.data.skips import SkipRanges
from palm_platform.run_dir import RunDir


def sequences_before(batch_size_at, step: int) -> int:
    """Global sequences the steps before `step` consumed (the schedule's sum)."""
    return sum(batch_size_at(s) for s in range(step))


def nth_unskipped(skips: SkipRanges, n: int) -> int:
    """The global index of the n-th (0-based) sequence outside the skip ranges."""
    position = n
    for start, end in skips:  # sorted, merged: each range before it pushes it on
        if start > position:
            break
        position += end - start
    return position


@dataclass(frozen=True)
class SkipSource:
    ranges: list[tuple[int, int]]
    said: str  # which ranges were used, for the header line


def run_skips(run_dir: Path, step: int, before_rollbacks: bool) -> SkipSource:
    """The run's skip ranges: all (what step S is in the run's final timeline), or only
    those of spikes before S (`before_rollbacks`: what step S was the first time it ran)."""
    from palm_platform.supervise.ledger import Ledger

    path = RunDir(Path(run_dir)).ledger
    if not path.exists():
        return SkipSource([], f"no skip ranges (no {path})")
    skips = Ledger.load(path).of_kind("skip")
    if before_rollbacks:
        skips = [e for e in skips if e["step"] < step]
    ranges = [(e["first_sequence"], e["end_sequence"]) for e in skips]
    which = "of spikes before this step" if before_rollbacks else "of the run"
    return SkipSource(ranges, f"{len(ranges)} skip range(s) {which} from {path}")


def _split_filter(job, run_dir: Path):
    """The held-out split the trainer applies (the run's recorded one when it exists)."""
    if job.eval is None:
        return None
    from palm_platform.data.heldout_split import split_sources

    path = RunDir(Path(run_dir)).eval_split
    recorded = json.loads(path.read_text()) if path.exists() else None

    def source_filter(sources, tokenizer):
        return split_sources(sources, tokenizer.eos_id, job.eval.heldout_fraction,
                             job.eval.split_seed, recorded).train

    return source_filter


def sample(job, job_file: str, step: int, process: int, rows: int | None,
           before_rollbacks: bool = False) -> list[str]:
    """The lines `palm data sample` prints (a header, then each row's decoded text)."""
    from palm_platform.data.pipeline import build_pipeline
    from palm_platform.data.prepare import store_status
    from palm_platform.data.store import StoreError

    hosts = job.topology.num_hosts
    if not 0 <= process < hosts:
        raise ValueError(f"--process {process}: the job has {hosts} processes (0..{hosts - 1})")
    status = store_status(job.data, Path.cwd())
    if status.state != "current":  # sampling never builds: say what would
        raise StoreError(f"{status.reason}. Fix: `palm data prepare {job_file}` (or `palm run "
                         f"{job_file}`, which prepares it first)")
    if status.unchecked:  # the raw inputs are gone: the store is all a batch reads
        print(f"palm data sample: {status.unchecked}", file=sys.stderr)
    run_dir = Path(job.run_dir) / job.name
    skips = run_skips(run_dir, step, before_rollbacks)
    pipeline = build_pipeline(job.data, seq_len=job.seq_len, base_dir=Path.cwd(),
                              process_index=process, process_count=hosts,
                              source_filter=_split_filter(job, run_dir))
    size = job.train.batch_size_at(step)
    first = nth_unskipped(SkipRanges(skips.ranges), sequences_before(job.train.batch_size_at,
                                                                     step))
    pipeline.set_state({"next_sequence": first, "skip_ranges": skips.ranges})
    batch = pipeline.local_batch(size)
    per_process = size // hosts
    shown = batch if rows is None else batch[:rows]
    lines = [f"{job.name} step {step}: global batch of {size} sequences from #{first}; "
             f"process {process} of {hosts} reads rows {process * per_process}.."
             f"{(process + 1) * per_process - 1}; {skips.said}; store {status.root}"]
    for row, tokens in enumerate(shown):
        lines.append(f"--- row {process * per_process + row} ({len(tokens)} tokens) ---")
        lines.append(pipeline.tokenizer.decode(tokens))
    return lines


def add_arguments(parser) -> None:
    parser.add_argument("job", help="job YAML file")
    parser.add_argument("--step", type=int, required=True, help="the training step")
    parser.add_argument("--process", type=int, default=0,
                        help="which process (host) of the job's topology reads (default 0)")
    parser.add_argument("--rows", type=int, default=None, help="show only the first K rows")
    parser.add_argument("--before-rollbacks", action="store_true",
                        help="apply only the skip ranges of spikes before --step: the batch "
                        "the step held the first time it ran (at a spike: what the model saw)")


def main(args) -> int:
    """`palm data sample`: exit 2 with one line on bad input (no store, a bad --process)."""
    from palm_platform.job import load_job_or_exit

    job = load_job_or_exit(args.job)
    if args.step < 0 or (args.rows is not None and args.rows < 1):
        print(f"palm data sample: --step {args.step} / --rows {args.rows}: give a step >= 0 "
              "and rows >= 1", file=sys.stderr)
        return 2
    try:
        lines = sample(job, args.job, args.step, args.process, args.rows,
                       args.before_rollbacks)
    except (ValueError, OSError) as error:  # StoreError, a missing input, a torn shard
        print(f"palm data sample: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
