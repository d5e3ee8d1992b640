"""Metrics and events: one JSONL file in the run folder, and W&B (offline unless told).

Only process 0 writes (every host sees the same global metrics). The W&B run id is derived
from the run folder, so every restart of a job resumes the same W&B run. The API key is
read by wandb from the environment (WANDB_API_KEY) and never written anywhere by us. W&B
names, replays and alerts: `palm_platform.metrics.wandb.sink`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from palm_platform.metrics.events import describe_event
from palm_platform.run_dir import RunDir

logger = logging.getLogger("palm")

METRICS_FILE = RunDir(Path()).metrics.name


class MetricsConfig(BaseModel):
    """The `metrics:` section of a job file: where metrics go and what is checked each step."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    wandb_project: str = Field(default="palm-platform", description="W&B project")
    wandb_entity: str | None = Field(default=None, description="W&B entity (team)")
    wandb_mode: Literal["offline", "online", "disabled"] | None = Field(
        default=None, description="default: $WANDB_MODE, else offline"
    )
    wandb_replay: Literal["xaxis", "rewind", "fork"] = Field(
        default="xaxis", description="how W&B shows steps replayed after a rollback or restart: "
        "xaxis (plotted against train/step, works offline and on any server), rewind or fork "
        "(W&B server features, online only; offline falls back to xaxis)"
    )
    log_every: int = Field(default=1, ge=1, description="steps between progress log lines")
    check_pods_identical: bool = Field(
        default=False, description="each step, compare every pod's copy of the parameters "
        "bitwise (a checksum all-gathered over pods; for tests and the local job)"
    )


def wandb_run_id(run_dir: Path, name: str) -> str:
    return f"{name}-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]}"


class MetricsSink:
    """`log(step, metrics)` every step, `event(kind, step, **fields)` for what happens.

    The JSONL line is written at once; W&B gets the same calls, in order, on a thread of its
    own: `wandb`'s import and `init` take seconds on every start and restart (2-6 s here), and
    its `log` a few milliseconds per row, none of which the train loop waits for. `close()`
    waits until W&B has everything.
    """

    def __init__(self, run_dir: Path, *, job_name: str, config: dict, enabled: bool,
                 wandb_project: str | None, wandb_entity: str | None = None,
                 wandb_mode: str | None = None, wandb_replay: str | None = None):
        self.enabled = enabled
        self.path = RunDir(Path(run_dir)).metrics
        self._wandb = None
        self._wandb_calls: ThreadPoolExecutor | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = wandb_mode or os.environ.get("WANDB_MODE") or "offline"
        if wandb_project and mode != "disabled":
            from palm_platform.metrics.wandb.sink import scan_metrics_file

            # The replay policy is a job field; the job is the config this sink records.
            replay = wandb_replay or (config.get("metrics") or {}).get("wandb_replay") or "xaxis"
            self._wandb_calls = ThreadPoolExecutor(1, thread_name_prefix="palm-wandb")
            self._wandb_calls.submit(
                self._open_wandb, Path(run_dir), run_id=wandb_run_id(Path(run_dir), job_name),
                name=job_name, config=config, project=wandb_project, entity=wandb_entity,
                mode=mode, replay=replay,
                # Read before this process writes a line: where its W&B rows start and which
                # of its steps are replays (the row counter keeps growing across restarts).
                scanned=scan_metrics_file(self.path))
        self._file = self.path.open("a", buffering=1)

    def _open_wandb(self, run_dir: Path, **kwargs: Any) -> None:
        try:
            from palm_platform.metrics.wandb.sink import WandbWriter

            self._wandb = WandbWriter(run_dir, **kwargs)
        except Exception as error:  # W&B must never stop training
            logger.warning("W&B disabled: %s", error)

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=float) + "\n")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._write({"kind": "step", "step": step, "time": time.time(), **metrics})
        self._to_wandb("log_step", step, dict(metrics))  # a copy: logged later, on W&B's thread

    def event(self, kind: str, step: int, *, alert: bool = False, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **fields}
        self._write(record)
        # `event_kind` lets a Ray worker drop the lines its driver prints too (ray/worker.py).
        logger.info("%s", describe_event(record), extra={"event_kind": kind})
        self._to_wandb("log_event", kind, step, fields, alert=alert)

    def _to_wandb(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._wandb_calls is not None:
            self._wandb_calls.submit(self._call_wandb, method, args, kwargs)

    def _call_wandb(self, method: str, args: tuple, kwargs: dict) -> None:
        """On W&B's thread, after its init and every earlier call."""
        if self._wandb is None:
            return
        try:
            getattr(self._wandb, method)(*args, **kwargs)
        except Exception as error:  # W&B must never stop training: warn once, then stop using it
            logger.warning("W&B disabled: %s", error)
            self._wandb = None

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._wandb_calls is not None:
            self._to_wandb("finish")
            self._wandb_calls.shutdown(wait=True)


def read_records(run_dir: Path) -> list[dict]:
    """Every record of a run folder's JSONL (skipping a torn last line of a running job)."""
    path = RunDir(Path(run_dir)).metrics
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics here. Fix: pass the run folder of a job")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        # Every record this sink writes has a kind, a step and a time; anything else in the
        # file (an edited or foreign line) is skipped rather than crash `palm status`.
        if (
            isinstance(record, dict)
            and isinstance(record.get("kind"), str)
            and type(record.get("step")) is int
            and isinstance(record.get("time"), int | float)
        ):
            records.append(record)
    return records
