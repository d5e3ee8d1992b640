"""`palm eval CKPT_OR_RUN_DIR --tasks T1,T2`: lm-evaluation-harness tasks on a checkpoint;
`--memorization N`: PaLM's memorization test (§8) on the run's own training data.

The shipped offline tasks (platform/eval/tasks/) are always available; `--include-path`
adds a folder of the user's own harness task YAMLs; standard harness tasks (hellaswag,
lambada, ...) work where the network can reach their datasets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="CKPT_OR_RUN_DIR",
                        help="run folder or its checkpoint directory")
    parser.add_argument("--tasks", default="", help="comma-separated harness task names")
    parser.add_argument("--include-path", type=Path, help="a folder of your own harness task YAMLs")
    parser.add_argument("--num-fewshot", type=int, help="examples in each prompt (task default)")
    parser.add_argument("--limit", type=int, help="at most this many examples per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", type=Path, help="write the results as JSON (never overwritten)")
    parser.add_argument("--memorization", type=int, metavar="N",
                        help="sample N trained sequences: exact greedy continuation rate")
    parser.add_argument("--prompt-tokens", type=int, default=50,
                        help="memorization prompt (paper: 50)")
    parser.add_argument("--continuation-tokens", type=int, default=50,
                        help="memorization continuation (paper: 50)")
    parser.add_argument("--seed", type=int, default=0, help="which sequences memorization samples")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest good one)")
    parser.add_argument("--job", type=Path,
                        help="the job file, when the run folder has no job.json")
    from palm_platform.eval.cluster import add_cluster_arguments

    add_cluster_arguments(parser)


def _check(args: argparse.Namespace) -> None:
    from palm_platform.eval.restore import EvalInputError

    if not args.tasks and args.memorization is None:
        raise EvalInputError("nothing to do. Fix: --tasks T1,T2 and/or --memorization N")
    if args.output is not None and args.output.exists():
        raise EvalInputError(
            f"{args.output}: exists; not overwritten. Fix: choose another --output")
    if args.include_path is not None and not args.include_path.is_dir():
        raise EvalInputError(f"--include-path {args.include_path}: not a folder of task YAMLs")
    if args.memorization is not None and args.memorization < 1:
        raise EvalInputError(f"--memorization must be >= 1, got {args.memorization}")


def task_manager(include_path: Path | None, names: list[str]):
    """The harness's task index: the shipped tasks and `include_path`, and the harness's own
    thousands of task YAMLs only when a task in `names` is not among those (indexing them
    took 18 s on a busy 2-core machine, the shipped ones 0.14 s)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + ([str(include_path)] if include_path else [])
    ours = TaskManager(include_path=paths, include_defaults=False)
    if all(name in ours.all_tasks for name in names):
        return ours
    return TaskManager(include_path=paths)


def run_tasks(run, args: argparse.Namespace) -> dict:
    """simple_evaluate over the requested tasks; raises EvalInputError for unknown names."""
    import lm_eval

    from palm_platform.eval.harness import PalmLM
    from palm_platform.eval.restore import EvalInputError

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    manager = task_manager(args.include_path, names)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        shipped = sorted(t for t in manager.all_tasks if t.startswith("palm_"))
        raise EvalInputError(f"unknown task(s) {unknown}. Fix: use a harness task name (shipped "
                             f"offline: {', '.join(shipped)}) or --include-path DIR")
    model = PalmLM(run.params, run.model_cfg, run.tokenizer, batch_size=args.batch_size,
                   max_length=run.job.seq_len,
                   **({"placement": run.placement} if run.placement else {}))
    return lm_eval.simple_evaluate(model=model, tasks=names, num_fewshot=args.num_fewshot,
                                   limit=args.limit, task_manager=manager, log_samples=False,
                                   bootstrap_iters=0)


def print_table(results: dict) -> None:
    """Task, shots, metric, value: one row per metric (rich; stderr columns dropped)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("task", "shots", "metric", "value")
    for task, metrics in sorted(results["results"].items()):
        shots = str((results.get("n-shot") or {}).get(task, ""))
        for key, value in sorted(metrics.items()):
            metric, _, _filter = key.partition(",")
            if (metric in ("alias", "sample_len") or "stderr" in metric
                    or not isinstance(value, int | float)):
                continue
            table.add_row(task, shots, metric, f"{value:.4g}")
    Console().print(table)


def quiet_harness() -> None:
    """The harness and datasets log per-task notes and progress bars; keep one line per event."""
    import logging
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the shipped tasks are local files
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def evaluate(run, args: argparse.Namespace) -> dict:
    """The report: the harness's results and/or the memorization rates (every host alike)."""
    report: dict = {"run": {"job": run.job.name, "step": run.step, "run_dir": str(run.run_dir)}}
    if args.tasks:
        results = run_tasks(run, args)
        report["results"] = results["results"]
        report["config"] = {k: results["config"].get(k) for k in ("limit", "batch_size")}
        report["n-shot"] = results.get("n-shot")
    if args.memorization is not None:
        from palm_platform.eval.memorization import memorization

        report["memorization"] = memorization(
            run, args.memorization, prompt_tokens=args.prompt_tokens,
            continuation_tokens=args.continuation_tokens, seed=args.seed,
            batch_size=args.batch_size).as_dict()
    return report


def evaluate_quietly(run, args: argparse.Namespace) -> dict:
    """`evaluate` on a cluster host, where the harness's own logging is not yet quieted."""
    quiet_harness()
    return evaluate(run, args)


def main(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from palm_platform.eval.restore import EvalInputError, restore_run

    quiet_harness()
    try:
        _check(args)
        if args.cluster:
            from palm_platform.eval.cluster import result_from_cluster

            job, run_dir, report = result_from_cluster("eval", args, evaluate_quietly)
            run = SimpleNamespace(job=job, run_dir=run_dir, step=report["run"]["step"])
        else:
            run = restore_run(args.target, step=args.step, job_file=args.job)
            report = evaluate(run, args)
    except (EvalInputError, ConnectionError) as error:
        print(f"palm eval: {error}", file=sys.stderr)
        return 2
    if "results" in report:
        print_table(report)
    if "memorization" in report:
        from palm_platform.eval.memorization import Memorization

        fields = Memorization.__dataclass_fields__
        kept = {k: v for k, v in report["memorization"].items() if k in fields}
        print(Memorization(**kept).line())
    from palm_platform.eval.wandb_log import log_report

    wandb_id = log_report(run, report)
    if wandb_id:
        print(f"logged to W&B run {wandb_id} (project {run.job.metrics.wandb_project})",
              file=sys.stderr)
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=1, default=str))
        print(f"results written to {args.output}", file=sys.stderr)
    return 0
