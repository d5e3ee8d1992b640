"""The W&B side of the metrics sink: grouped names, no dropped step, markers and alerts.

W&B drops any row logged at a step lower than its current step ("Tried to log to step 31
that is less than the current step 45 ... this data will be ignored"). A rollback or a
restart replays steps, so the loop's step cannot be W&B's step. `metrics.wandb_replay`:

- `xaxis` (default; offline, self-managed servers, anywhere): W&B's own step is a row
  counter that only grows (persisted as the number of lines already in metrics.jsonl, so
  it keeps growing across restarts and offline segments sync in order), and every metric
  is plotted against `train/step` (`define_metric(step_metric=...)`). A replayed step is a
  second point at the same x, flagged `train/replayed` = 1; the spike, rollback and restart
  are markers (`events/<kind>` = 1, `events/spike/loss`) at their step.
- `rewind` (online, W&B's preview rewind): W&B's step is the train step; before a replayed
  step the run is reopened with `resume_from=ID?_step=N`, so the live curve is the clean
  history and the abandoned segment is archived by W&B. Markers land on the first
  replayed step.
- `fork` (online): as rewind, but each replay opens a new run `fork_from=ID?_step=N`
  (`<id>-fork<k>`); the current id is kept in the run folder so restarts resume it.

rewind and fork need a server: offline they fall back to xaxis (one warning line).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from palm_platform.atomic_write import write_atomic
from palm_platform.metrics.wandb import keys
from palm_platform.metrics.events import describe_event
from palm_platform.run_dir import RunDir

logger = logging.getLogger("palm")

REPLAY_POLICIES = ("xaxis", "rewind", "fork")
# Policies that only a W&B server can carry out (offline, wandb 0.31 records resume_from /
# fork_from in the run file but nothing rewinds or forks until a server applies them).
NEEDS_SERVER = {"rewind", "fork"}
STATE_FILE = "wandb_run.json"  # fork mode: the run id now written to
# MetricsSink.log writes step records as {"kind": "step", "step": N, ...} (json.dumps order).
_STEP_RECORD = re.compile(rb'^\{"kind": "step", "step": (\d+)', re.MULTILINE)


def scan_metrics_file(path: Path) -> tuple[int, int, int]:
    """(lines, highest trained step, last trained step) of a metrics.jsonl: where a new
    process's W&B rows start, which of its steps are replays, where its W&B history ends."""
    if not path.exists():
        return 0, 0, 0
    data = path.read_bytes()  # a regex over the bytes: a 255k-step file takes well under 1 s
    steps = [int(m) for m in _STEP_RECORD.findall(data)]
    return data.count(b"\n"), max(steps, default=0), (steps[-1] if steps else 0)


def run_moment(run_id: str, step: int) -> str:
    """W&B's `RUN?_step=N` syntax for resume_from / fork_from."""
    return f"{run_id}?_step={step}"


class WandbWriter:
    """One W&B run per job (resumed across restarts) fed by MetricsSink on process 0."""

    def __init__(self, run_dir: Path, *, run_id: str, name: str, config: dict,
                 project: str, entity: str | None, mode: str, replay: str = "xaxis",
                 scanned: tuple[int, int, int] | None = None):
        """`scanned`: `scan_metrics_file` of the run's metrics.jsonl before this process
        wrote to it (read here when not given)."""
        import wandb

        if replay not in REPLAY_POLICIES:
            raise ValueError(f"metrics.wandb_replay: {replay!r} is not one of {REPLAY_POLICIES}")
        if replay in NEEDS_SERVER and mode != "online":
            logger.warning("metrics.wandb_replay: %s needs W&B online (mode is %s); "
                           "logging replayed steps against train/step instead (xaxis)", replay, mode)
            replay = "xaxis"
        self.replay, self.run_dir = replay, Path(run_dir)
        self._wandb, self._base_id = wandb, run_id
        self._init_kwargs = dict(project=project, entity=entity, name=name, mode=mode,
                                 dir=str(run_dir), config=config)
        rows, self._high_water, last_step = scanned or scan_metrics_file(RunDir(Path(self.run_dir)).metrics)
        self._attempt = 0
        self._forks = 0
        current = run_id
        if replay == "fork" and (self.run_dir / STATE_FILE).exists():
            state = json.loads((self.run_dir / STATE_FILE).read_text())
            current, self._forks = state["run_id"], state["forks"]
        self._open(id=current, resume="allow")
        self._row = max(rows, self.run.step)  # xaxis: W&B's step, only ever growing
        # rewind/fork: the last train step in W&B's history (offline, a resumed run's step is 0)
        self._last_step = max(self.run.step - 1, last_step)
        # rewind/fork: event rows written since the last step row (a rewind truncates them,
        # so they are logged again on the first replayed row), and events that came at a
        # step below the current one (a restored checkpoint), logged on the next row.
        self._since_step_row: list[dict] = []
        self._unwritten: list[dict] = []
        self._alerted: set[tuple] = set()

    # -- opening a run (once, then again at each rewind or fork) --------------------------

    def _open(self, **kwargs: Any) -> None:
        # A fresh Settings each time: wandb.init writes resume options into the one it gets.
        self.run = self._wandb.init(**self._init_kwargs, **kwargs,
                                    settings=self._wandb.Settings(silent=True))
        self.run.define_metric(keys.STEP_METRIC, summary=keys.summary_of(keys.STEP_METRIC))
        for group in ("train", "eval", "goodput", "events"):  # everything against train/step
            self.run.define_metric(f"{group}/*", step_metric=keys.STEP_METRIC)
        self._defined: set[str] = set()

    def _define(self, row: dict) -> None:
        """Summaries per key, on first sight (eval keys are only known when logged)."""
        for key in row.keys() - self._defined:
            summary = keys.summary_of(key)
            if summary and key != keys.STEP_METRIC:
                self.run.define_metric(key, step_metric=keys.STEP_METRIC, summary=summary)
            self._defined.add(key)

    def _reopen_at(self, step: int) -> None:
        """rewind/fork: continue the run's history from train step `step`."""
        parent = self.run.id
        self.run.finish()
        if self.replay == "rewind":
            self._open(id=parent, resume_from=run_moment(parent, step))
        else:
            self._forks += 1
            child = f"{self._base_id}-fork{self._forks}"
            self._open(id=child, fork_from=run_moment(parent, step))
            write_atomic(self.run_dir / STATE_FILE, json.dumps({"run_id": child, "forks": self._forks}))
        self._last_step = step

    # -- rows ------------------------------------------------------------------------------

    def _write(self, row: dict, step: int) -> None:
        self._define(row)
        if self.replay == "xaxis":
            self.run.log(row, step=self._row)
            self._row += 1
        else:
            self.run.log(row, step=step)
            self._last_step = step

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        replayed = step <= self._high_water
        self._high_water = max(self._high_water, step)
        row = {keys.step_key(k): v for k, v in metrics.items() if isinstance(v, (int, float))}
        row.update({keys.STEP_METRIC: step, keys.REPLAYED: int(replayed), keys.ATTEMPT: self._attempt})
        if self.replay != "xaxis":
            carried = self._unwritten
            if step <= self._last_step:
                self._reopen_at(step - 1)
                carried = self._since_step_row + self._unwritten
            for event_row in carried:
                row.update({k: v for k, v in event_row.items() if k != keys.STEP_METRIC})
            self._since_step_row, self._unwritten = [], []
        self._write(row, step)

    def log_event(self, kind: str, step: int, fields: dict[str, Any], *, alert: bool) -> None:
        if isinstance(fields.get("attempt"), int):
            self._attempt = fields["attempt"]
        row = {**keys.event_keys(kind, fields), keys.STEP_METRIC: step, keys.ATTEMPT: self._attempt}
        if self.replay == "xaxis":
            self._write(row, step)
        elif step >= self._last_step:
            self._write(row, step)
            self._since_step_row.append(row)
        else:
            self._unwritten.append(row)
        if alert:
            self._alert(kind, step, fields)

    def _alert(self, kind: str, step: int, fields: dict[str, Any]) -> None:
        # One alert per event: only process 0 has a writer, and an event seen twice (same
        # kind, step and attempt) is not alerted twice. wait_duration=0: distinct events
        # with similar titles must not be swallowed by W&B's per-title rate limit.
        event = (kind, step, self._attempt)
        if event in self._alerted:
            return
        self._alerted.add(event)
        text = describe_event({"kind": kind, "step": step, **fields})
        self.run.alert(title=f"{kind} at step {step} (attempt {self._attempt})", text=text,
                       level=keys.ALERT_LEVELS.get(kind, "INFO"), wait_duration=0)

    def finish(self) -> None:
        if self._unwritten:
            row: dict = {}
            for event_row in self._unwritten:
                row.update(event_row)
            self.run.log({**row, keys.STEP_METRIC: self._last_step}, step=self._last_step)
        self.run.finish()

