"""Ctrl-C / SIGTERM on `palm run`: stop every host at the same step, keep the checkpoints.

Killing the driver kills the Ray Train workers wherever they are, possibly in the middle
of an asynchronous checkpoint save. Instead, the first SIGINT or SIGTERM:

1. sets a "stop requested" key in Ray's GCS key-value store (reachable from every host of
   a real cluster, unlike a file in the run folder, which lives on host 0 only);
2. process 0 reads that key after every step; the first time it sees it, at step k, it
   publishes the stop step k + `STOP_MARGIN_STEPS`. Hosts run in lock-step (every step has
   collectives), so the others are at most one step apart and all read it before they
   pass it: every host stops after the same step (a host stopping a step early would leave
   its peers waiting in a collective);
3. at the stop step each worker leaves the train loop normally: `Trainer.close()` waits for
   an in-flight checkpoint, and Ray Train sees the workers finish, not fail (no restart);
4. `palm run` prints "interrupted at step N; re-run the same command to resume" and
   exits 128 + signal (130 for SIGINT, 143 for SIGTERM).

A second signal, or no stop within `grace_s`, ends the driver at once (Ray then kills the
workers; the newest committed checkpoint is still intact: Orbax commits atomically).
`ray.experimental.internal_kv` is the GCS store Ray itself uses for such flags; a named
actor would do the same with more moving parts.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from palm_platform.hook_protocol import StopTraining
from palm_platform.run_dir import RunDir

STOP_MARGIN_STEPS = 2
KV_NAMESPACE = "palm"


class StopRequested(StopTraining):
    """Raised in a worker at the agreed stop step; the worker then returns normally."""


def stop_key(job_name: str, launched_at: float) -> str:
    return f"stop/{job_name}/{launched_at:.6f}"


def exit_code(signum: int) -> int:
    return 128 + signum


def last_logged_step(run_dir: Path) -> int | None:
    """The step of the newest `step` record of the run's metrics file, or None."""
    record = newest_step_record(run_dir)
    return None if record is None else int(record["step"])


def newest_step_record(run_dir: Path) -> dict | None:
    """The newest `step` record of the run's metrics file (its last 64 KiB), or None."""
    path = RunDir(Path(run_dir)).metrics
    if not path.exists():
        return None
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn first or last line
        if isinstance(record, dict) and record.get("kind") == "step":
            return record
    return None


def _kv_get(key: str) -> bytes | None:
    from palm_platform.compat.ray import kv_get

    return kv_get(key, KV_NAMESPACE)


def _kv_put(key: str, value: str) -> None:
    from palm_platform.compat.ray import kv_put

    kv_put(key, value.encode(), KV_NAMESPACE)


def forget_launch(key: str) -> None:
    """When a launch of `palm run` ends: delete what its workers left in Ray's GCS store under
    its stop key (the stop request, the liveness board, the host agents' generations), which
    would otherwise stay for the life of the cluster. Best effort: a gone GCS keeps nothing."""
    from palm_platform.compat.ray import kv_delete_prefix

    for prefix in (f"{key}/", f"alive/{key}/", f"warm/{key}/"):
        try:
            kv_delete_prefix(prefix, KV_NAMESPACE)
        except Exception:  # noqa: BLE001 - the cluster may be gone already
            pass


def publish_stop(key: str) -> None:
    """Driver side: ask the workers to stop (process 0 then picks the step)."""
    _kv_put(f"{key}/requested", "1")


def agreed_stop_step(key: str) -> int | None:
    value = _kv_get(f"{key}/at")
    return int(value) if value else None


class StopListener:
    """Worker side: `check(step)` raises StopRequested at the agreed stop step."""

    def __init__(self, key: str, process_index: int):
        self.key, self.process_index = key, process_index
        self.stop_at: int | None = None

    def check(self, step: int) -> None:
        if self.stop_at is None:
            if self.process_index == 0:
                if _kv_get(f"{self.key}/requested"):
                    self.stop_at = step + STOP_MARGIN_STEPS
                    _kv_put(f"{self.key}/at", str(self.stop_at))
            else:
                self.stop_at = agreed_stop_step(self.key)
        if self.stop_at is not None and step >= self.stop_at:
            raise StopRequested(step)


class InterruptHandler:
    """Driver side: the first SIGINT/SIGTERM asks the workers to stop; a second exits."""

    def __init__(self, key: str, run_dir: Path, *, grace_s: float = 120.0,
                 on_first=None):
        self.key, self.run_dir, self.grace_s = key, Path(run_dir), grace_s
        self.signum: int | None = None
        self._on_first = on_first or (lambda: None)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> InterruptHandler:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: do not wait any longer
            self._hard_exit(f"second {signal.Signals(signum).name}: exiting without waiting")
        self.signum = signum
        # Ray calls are not safe inside a signal handler (the main thread may be inside one):
        # publish from a thread, and bound the wait with a timer.
        threading.Thread(target=self._request_stop, name="palm-stop", daemon=True).start()

    def _request_stop(self) -> None:
        self._on_first()
        print(f"{signal.Signals(self.signum).name}: stopping every host within "
              f"{STOP_MARGIN_STEPS} steps, after its checkpoints are written (again to exit "
              "at once)", file=sys.stderr, flush=True)
        try:
            publish_stop(self.key)
        except Exception as err:  # noqa: BLE001 - no cluster to talk to: just exit
            self._hard_exit(f"could not reach the cluster to stop the workers ({err})")
        timer = threading.Timer(self.grace_s, self._hard_exit,
                                args=(f"the workers did not stop within {self.grace_s:.0f} s",))
        timer.daemon = True
        timer.start()

    def _hard_exit(self, why: str) -> None:
        print(f"{why}; {resume_message(self.run_dir, self.key)}", file=sys.stderr, flush=True)
        os._exit(exit_code(self.signum or signal.SIGINT))


def resume_message(run_dir: Path, key: str | None = None) -> str:
    """`interrupted at step N; ...`: N agreed by the workers, else the newest logged step."""
    step = None
    if key is not None:
        try:
            step = agreed_stop_step(key)
        except Exception:  # noqa: BLE001 - no cluster: fall back on the metrics file
            step = None
    step = step if step is not None else last_logged_step(run_dir)
    at = f" at step {step}" if step is not None else ""
    return f"interrupted{at}; re-run the same command to resume"
