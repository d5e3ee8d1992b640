"""`palm generate|eval ... --cluster`: the same command as a Ray job on the job's own hosts.

    driver (this process)                     every TPU host (one Ray Train worker each)
    find the run's job, check the flags  ->   restore the checkpoint sharded over the job's
    launch() as `palm run` does               mesh (as training did), run the same decode /
    (ray/launch.py: JaxTrainer, TPU path)     harness code on every host (SPMD), host 0
    read host 0's result, print it       <-   puts the result in Ray's GCS key-value store

For models that do not fit one host (palm-62b, palm-540b; palm-8b on a small host): their
parameters exist only sharded, as they were trained. The result travels through the GCS
store, like `palm run`'s stop flag (ray/interrupt.py), because a real cluster's hosts share
no file system with the driver.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KV_NAMESPACE = "palm"

# What a command computes on every host from the restored run and its arguments: passed in
# by eval_cli / generate_cli (Ray pickles the function by reference), so this module never
# imports the commands that import it.
Compute = Callable[[Any, argparse.Namespace], dict]

RESULT_PREFIX = "eval-result"


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", action="store_true",
                        help="run on the Ray cluster's hosts with the job's mesh (models that do "
                        "not fit one host); default: this process")
    parser.add_argument("--address", default=None, help="with --cluster: Ray address (default: "
                        "RAY_ADDRESS, else the local cluster of `palm cluster up`)")


def result_from_cluster(command: str, args: argparse.Namespace, compute: Compute):
    """`palm generate|eval --cluster`: the job of `args.target`, its run folder and host 0's
    result of `compute(run, args)` on every host; a worker's input error comes back as
    EvalInputError, as it would in one process."""
    from palm_platform.eval.restore import EvalInputError, check_run_storage, find_job

    check_run_storage(args.target, args.job)
    job, run_dir = find_job(args.target, args.job)
    check_run_storage(args.target, args.job, job)  # here, before any worker starts
    outcome = run_on_cluster(command, args, job, run_dir, compute)
    if "error" in outcome:
        raise EvalInputError(outcome["error"])
    return job, run_dir, outcome["ok"]


def run_on_cluster(command: str, args: argparse.Namespace, job, run_dir: Path,
                   compute: Compute) -> dict:
    """Launch `compute` (`command`'s work) on one worker per host of the job's topology;
    host 0's result.

    Returns {"ok": result} or {"error": one-line message}; raises ConnectionError when no
    cluster can be reached and InfeasibleTopologyError when it cannot hold the job.
    """
    # Ray (through its door) is imported only here: `palm generate|eval` registers this
    # module's arguments, and a local run or an input error must not pay Ray's import first.
    from palm_platform.compat.ray import kv_delete, kv_get
    from palm_platform.ray.launch import connect, launch
    from palm_platform.ray.launch_spec import LaunchSpec

    topo = job.topology
    connect(args.address, start_local=topo.shape() if topo.local else None)
    key = f"{RESULT_PREFIX}/{job.name}/{command}/{time.time():.6f}"
    worker_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                   if k != "func"}
    config = {"command": command, "args": worker_args, "job": job.model_dump(mode="json"),
              "run_dir": str(Path(run_dir).resolve()), "result_key": key, "compute": compute}
    # The job's own launch (heartbeat limit from faults.hang_timeout_s included), on all of
    # its pods and without restarts: an eval runs once.
    launch(eval_worker, config, LaunchSpec.for_job(job, run_dir, purpose=command).on_all_pods())
    raw = kv_get(key, KV_NAMESPACE)
    if raw is None:
        return {"error": "the workers finished without a result (see their log lines above)"}
    kv_delete(key, KV_NAMESPACE)
    return json.loads(raw)


def eval_worker(config: dict) -> None:
    """Ray Train entry on every host: restore sharded, compute, host 0 publishes."""
    from palm_platform.ray.worker import configure_logging

    configure_logging()
    import jax

    from palm_platform.eval.restore import EvalInputError, restore_job
    from palm_platform.job import Job

    job = Job.model_validate(config["job"])
    args = argparse.Namespace(**config["args"])
    try:
        run = restore_job(job, Path(config["run_dir"]), step=args.step, sharded=True)
        payload = {"ok": config["compute"](run, args)}
    except EvalInputError as error:  # every host raises it alike (same inputs, same data)
        payload = {"error": str(error)}
    if jax.process_index() == 0:
        from palm_platform.compat.ray import kv_put

        kv_put(config["result_key"], json.dumps(payload, default=str).encode(), KV_NAMESPACE)
