"""How metrics.jsonl names become W&B names: one table, read by the sink and the workspace.

metrics.jsonl keeps the loop's flat names (`loss`, `mfu`, events by kind), which `palm
status` and the tests read. W&B users expect grouped names (`train/loss`, `eval/...`,
`goodput/...`, `events/...`), so the W&B path renames through this table. Every W&B row
carries `train/step`, the x-axis of every metric (`define_metric(step_metric=...)`).
"""

from __future__ import annotations

import re
from typing import Any

from palm_platform.metrics.goodput import OTHER, RECOMPUTATION, RESTART

STEP_METRIC = "train/step"
REPLAYED = "train/replayed"  # 1 on a step trained again after a rollback or a restart
ATTEMPT = "train/attempt"  # the worker group's attempt (0, then 1 after the first restart)

# metrics.jsonl step record key -> W&B key (a key not listed goes to train/<key>).
STEP_KEYS: dict[str, str] = {
    "loss": "train/loss",
    "z_loss": "train/z_loss",
    "grad_norm": "train/grad_norm",
    "learning_rate": "train/learning_rate",
    "tokens": "train/tokens",
    "tokens_per_s": "train/tokens_per_s",
    "mfu": "train/mfu",
    "step_s": "train/step_s",
    "batch_size": "train/batch_size",
    "compiled": "train/compiled",
    "pods_identical": "train/pods_identical",
}
EVAL_PREFIX = "eval_"  # step keys from the eval hook: eval_loss -> eval/loss

# Events whose fields are measurements, not markers: kind -> W&B group of their fields.
EVENT_GROUPS: dict[str, str] = {"goodput": "goodput", "eval": "eval"}
BADPUT_FIELD = re.compile(r"^badput_(?P<cause>.+)_s$")  # goodput event: badput_compile_s
BADPUT_GROUP = "goodput/badput"
# The loop's non-productive phases (train/loop.py) and the tracker's own causes.
BADPUT_CAUSES = ("startup", "compile", "data", "checkpoint", "eval", RECOMPUTATION, RESTART,
                 "degraded", OTHER)  # degraded: the missing pods' share of an elastic run's steps
# A few event fields that belong with the training metrics.
EVENT_FIELD_KEYS: dict[tuple[str, str], str] = {
    ("start", "cross_pod_bytes_per_step"): "train/cross_pod_bytes_per_step",
}
# Events shown as markers (events/<kind> = 1 at the event's step), and the ones W&B alerts on.
MARKER_EVENTS = ("spike", "rollback", "skip", "restart", "stop", "start", "checkpoint_saved",
                 "checkpoint_restored", "resize")
ALERT_LEVELS = {"spike": "WARN", "rollback": "WARN", "restart": "WARN", "stop": "ERROR",
                "resize": "WARN"}


def step_key(name: str) -> str:
    """W&B name of one key of a step record."""
    if name in STEP_KEYS:
        return STEP_KEYS[name]
    if name.startswith(EVAL_PREFIX):
        return "eval/" + name[len(EVAL_PREFIX):]
    return "train/" + name


def event_keys(kind: str, fields: dict[str, Any]) -> dict[str, float]:
    """W&B row of one event: measurements under their group, markers under events/."""
    numeric = {k: v for k, v in fields.items() if isinstance(v, (int, float))}
    row: dict[str, float] = {} if kind in EVENT_GROUPS else {marker_key(kind): 1}
    for name, value in numeric.items():
        row[event_field_key(kind, name)] = value
    return row


def marker_key(kind: str) -> str:
    return f"events/{kind}"


def event_field_key(kind: str, name: str) -> str:
    """W&B name of one numeric field of an event (goodput's badput_<cause>_s by cause)."""
    if kind in EVENT_GROUPS:
        badput = BADPUT_FIELD.match(name) if kind == "goodput" else None
        if badput:
            return badput_key(badput["cause"])
        group = EVENT_GROUPS[kind]  # the eval event's fields are already eval/<source>/<metric>
        return name if name.startswith(group + "/") else f"{group}/{name}"
    return EVENT_FIELD_KEYS.get((kind, name), f"events/{kind}/{name}")


def badput_key(cause: str) -> str:
    return f"{BADPUT_GROUP}/{cause}_s"


def summary_of(key: str) -> str | None:
    """W&B summary of a key: best (min) and last loss, best eval accuracy, last goodput."""
    if key == STEP_METRIC:
        return "max"
    if key.endswith("loss"):
        return "min,last"
    if key.startswith("eval/") and key.endswith(("acc", "accuracy")):
        return "max,last"
    if key.startswith("goodput/") or key == "train/cross_pod_bytes_per_step":
        return "last"
    return None

