"""`palm eval` results into the run's own W&B run (the one training wrote to), when it has one.

The run id is the train loop's (`metrics.wandb_run_id` of the run folder), resumed, so the
scores sit beside the loss curves, at the checkpoint's step, under `harness/` and
`memorization/`. Offline unless the job or WANDB_MODE says otherwise; W&B problems never fail
the evaluation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from palm_platform.metrics.sink import wandb_run_id

log = logging.getLogger("palm")


def flatten(report: dict) -> dict[str, float]:
    """{harness/<task>/<metric>: value, memorization/<field>: value} from a `palm eval` report."""
    out: dict[str, float] = {}
    for task, metrics in (report.get("results") or {}).items():
        for key, value in metrics.items():
            metric = key.split(",")[0]
            if isinstance(value, int | float) and "stderr" not in metric:
                out[f"harness/{task}/{metric}"] = float(value)
    for key, value in (report.get("memorization") or {}).items():
        if isinstance(value, int | float):
            out[f"memorization/{key}"] = float(value)
    return out


def log_report(run, report: dict) -> str | None:
    """Log to the run's W&B run; returns the W&B run id, or None when W&B is off."""
    metrics = run.job.metrics
    mode = metrics.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    if not metrics.wandb_project or mode == "disabled":
        return None
    try:
        import wandb

        run_id = wandb_run_id(Path(run.run_dir), run.job.name)
        wb = wandb.init(project=metrics.wandb_project, entity=metrics.wandb_entity,
                        name=run.job.name, id=run_id, resume="allow", mode=mode,
                        dir=str(run.run_dir), settings=wandb.Settings(silent=True))
        wb.log({**flatten(report), "eval_step": run.step})
        wb.finish()
        return run_id
    except Exception as error:  # W&B must never fail an evaluation
        log.warning("W&B logging skipped: %s", error)
        return None
