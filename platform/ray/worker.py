"""What each Ray Train worker (one per TPU host) runs: the train loop, supervised.

jax.distributed is already initialised by the worker group (palm_platform.ray.jax_init).
A watchdog (supervise/watchdog.py) turns "no step for hang_timeout_s" into a process exit, which Ray Train sees as
a worker failure: it restarts the whole group, and the loop resumes from the newest good
checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from palm_platform.supervise.watchdog import Watchdog

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


def train_worker(config: dict) -> None:
    """Ray Train entry: `config` = {"job": Job as JSON, "run_dir": str}."""
    entered = time.time()
    configure_logging()
    import jax
    import psutil

    from palm_platform.job import Job
    from palm_platform.train.loop import Trainer

    # Where a (re)start spends its seconds: the Trainer reports the spans between these.
    marks = {"process_started": psutil.Process().create_time(), "train_fn_entered": entered,
             "imported": time.time()}

    job = Job.model_validate(config["job"])
    run_dir = Path(config["run_dir"])
    host = f"host {jax.process_index()}/{jax.process_count()}"
    attempt = _next_attempt(run_dir) if jax.process_index() == 0 else 0

    def on_hang(idle_s: float) -> None:
        logger.error("%s: no step for %.0f s (limit %.0f s): exiting so Ray Train restarts the "
                     "worker group from the newest checkpoint", host, idle_s, job.faults.hang_timeout_s)
        os._exit(75)

    # Started after the first step, so compilation does not count as a hang.
    watchdog = Watchdog(job.faults.hang_timeout_s, on_hang)

    def on_step(step: int) -> None:
        if watchdog.last_step is None:
            watchdog.start()
        watchdog.beat(step)

    trainer = Trainer(job, run_dir, attempt=attempt, on_step=on_step,
                      launched_at=config.get("launched_at"), startup_marks=marks)
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
