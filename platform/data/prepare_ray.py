"""The prepare job's units on a Ray cluster: one actor per worker, each holding one tokenizer.

Why actors and not Ray Data: Ray Data has no ArrayRecord or zarr sink for our store, orders
its output by scheduling (our shards must follow input order, which the manifest gives
independently of who finishes first), and its job-level checkpointing is beta in Ray 2.60;
the sidecars already make a rerun resume. Why actors and not plain tasks: a worker loads
its SentencePiece model once (from bytes shipped through the object store, since a worker
may be another machine without the model file) and keeps it for every unit it is given.
Each actor takes one CPU, so the job fits the fake-TPU nodes of `palm cluster up` (1 CPU
each, the head 0) as well as a CPU node pool. Units are handed out one at a time to
whichever actor is free; a worker killed mid-shard is restarted by Ray and the unit
retried (max_restarts, max_task_retries), and since a shard is written whole before its
sidecar commits it, the retry's shard is the same.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from palm_platform.data.prepare_units import Unit

RESTARTS = 3  # per actor: a unit that kills its worker this often is an error, not bad luck


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else repr(error)


class PrepareWorkerError(RuntimeError):
    """A unit failed on a worker; the message is the worker's one-line error."""


class ShardWorker:
    """One worker of the prepare job: a tokenizer, and units to turn into shards.

    The constructor takes nothing: Ray logs a C++ warning into the driver's terminal for an
    actor with max_restarts whose constructor arguments live in the object store (the
    model's bytes would). The model comes with each unit instead, as a reference inside a
    list (not resolved by Ray), fetched once per worker process (again after a restart)."""

    def __init__(self):
        self.tokenizer = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, root: str, unit: Unit, model: list) -> dict:
        """The unit's sidecar, or {"error": line} for an input or store error (a typed
        outcome instead of an exception across processes, as Levanter does). `model`:
        [a reference to the model's bytes, its path]."""
        from palm_platform.data.prepare_shard import run_unit
        from palm_platform.data.store import StoreError

        if self.tokenizer is None:
            import ray

            from palm_platform.data.tokenizer import Tokenizer

            model_ref, model_path = model
            self.tokenizer = Tokenizer(ray.get(model_ref), model_path)
        try:
            return run_unit(root, unit, self.tokenizer)
        except (OSError, ValueError, StoreError) as e:
            return {"error": f"{unit.files[0]}: {_first_line(e)}"}


def _worker_env() -> dict[str, str]:
    """Variables a worker needs to reach gs:// like the driver (the local emulator's)."""
    from palm_platform.storage.env import COMPANION_VARS, URL_VARS

    names = (*URL_VARS, *COMPANION_VARS, "GOOGLE_APPLICATION_CREDENTIALS")
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def connect(address: str | None, workers: int | None) -> str | None:
    """Use the Ray instance this process is attached to, else `address`, else start a local
    one (as `ray.init()` does) sized for `workers`. Finding the palm cluster and its token
    is the caller's (commands/data.py, ray/run.py), before Ray is imported. When this call
    started Ray: the instance's own temp folder (for the caller to remove after
    ray.shutdown())."""
    import ray

    if ray.is_initialized():
        return None
    runtime_env = {"env_vars": _worker_env()}
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
        return None
    # Its own temp folder, not the shared /tmp/ray: another user's local Ray on this machine
    # then neither finds this instance nor mixes its session logs into ours.
    temp_dir = tempfile.mkdtemp(prefix="palm-prepare-ray-")
    ray.init(num_cpus=max(workers or 0, os.cpu_count() or 1), include_dashboard=False,
             logging_level=logging.WARNING, runtime_env=runtime_env, _temp_dir=temp_dir)
    return temp_dir


def run_on_ray(root: str, units: list[Unit], model: bytes, model_path: str, *,
               address: str | None = None, workers: int | None = None) -> Iterator[dict]:
    """Yield each unit's sidecar as it is committed (in completion order)."""
    started_here = connect(address, workers)
    import ray

    actors: list = []
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        # More actors than the cluster's CPUs would never start, and the units handed to
        # them would wait forever: the count is capped.
        count = min(len(units), workers or cpus, cpus)
        if count < 1:
            raise PrepareWorkerError("the Ray cluster has no CPUs for the prepare job's workers "
                                     "(each takes 1). Fix: add CPU nodes to the cluster")
        actor = ray.remote(num_cpus=1, max_restarts=RESTARTS,
                           max_task_retries=RESTARTS)(ShardWorker)
        model_box = [ray.put(model), model_path]
        actors = [actor.remote() for _ in range(count)]
        pending = list(reversed(units))
        running: dict = {}  # ObjectRef -> (actor, unit)

        def submit(worker) -> None:
            if pending:
                unit = pending.pop()
                running[worker.run.remote(root, unit, model_box)] = (worker, unit)

        for worker in actors:
            submit(worker)
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            worker, unit = running.pop(done)
            try:
                sidecar = ray.get(done)
            except ray.exceptions.RayError as e:  # the worker died more than RESTARTS times
                raise PrepareWorkerError(f"{unit.files[0]}: a prepare worker failed on it "
                                         f"{RESTARTS + 1} times ({_first_line(e)})") from None
            if "error" in sidecar:
                raise PrepareWorkerError(sidecar["error"])
            yield sidecar
            submit(worker)
    finally:
        for worker in actors:  # their CPUs go back to the cluster now, not when we exit
            ray.kill(worker)
        if started_here:
            ray.shutdown()
            shutil.rmtree(started_here, ignore_errors=True)
