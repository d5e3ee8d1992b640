"""What each Ray Train worker (one per TPU host) runs: the train loop, supervised.

jax.distributed is already initialised by the worker group (palm_platform.ray.jax_init).
A watchdog turns "no step for hang_timeout_s" into a process exit, which Ray Train sees as
a worker failure: it restarts the whole group, and the loop resumes from the newest good
checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger("palm")


def configure_logging() -> None:
    """One line per event on stderr for our loggers; libraries only warn. Idempotent."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("palm", "palm_platform"):
        ours = logging.getLogger(name)
        ours.handlers = [handler]
        ours.propagate = False
        ours.setLevel(logging.INFO)
    for noisy in ("absl", "orbax", "jax", "tensorstore", "etils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


class HangWatchdog:
    """Exit the process when `beat()` was not called for `timeout_s` seconds."""

    def __init__(self, timeout_s: float, what: str):
        self.timeout_s, self.what = timeout_s, what
        self._last = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="palm-watchdog").start()

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                logger.error("%s: no progress for %.0f s (limit %.0f s): exiting so Ray Train "
                             "restarts the worker group", self.what, idle, self.timeout_s)
                os._exit(75)


def train_worker(config: dict) -> None:
    """Ray Train entry: `config` = {"job": Job as JSON, "run_dir": str}."""
    configure_logging()
    import jax
    from palm_platform.job import Job
    from palm_platform.train.loop import Trainer

    job = Job.model_validate(config["job"])
    run_dir = Path(config["run_dir"])
    host = f"host {jax.process_index()}/{jax.process_count()}"
    attempt = _next_attempt(run_dir) if jax.process_index() == 0 else 0
    watchdog = HangWatchdog(job.faults.hang_timeout_s, host)
    trainer = Trainer(job, run_dir, attempt=attempt, on_step=lambda step: watchdog.beat())
    try:
        summary = trainer.run()
    finally:
        watchdog.stop()
        trainer.close()
    if jax.process_index() == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary.__dict__, default=float, indent=1))


def _next_attempt(run_dir: Path) -> int:
    """0 for the first start of the worker group, 1 after the first restart, ..."""
    path = run_dir / "attempts"
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = int(path.read_text()) + 1 if path.exists() else 0
    path.write_text(str(attempt))
    return attempt
