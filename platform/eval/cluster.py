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
from dataclasses import replace
from pathlib import Path

KV_NAMESPACE = "palm"

RESULT_PREFIX = "eval-result"


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", action="store_true",
                        help="run on the Ray cluster's hosts with the job's mesh (models that do "
                        "not fit one host); default: this process")
    parser.add_argument("--address", default=None, help="with --cluster: Ray address (default: "
                        "RAY_ADDRESS, else the local cluster of `palm cluster up`)")


def result_from_cluster(command: str, args: argparse.Namespace):
    """`palm generate|eval --cluster`: the job of `args.target`, its run folder and host 0's
    result; a worker's input error comes back as EvalInputError, as it would in one process."""
    from palm_platform.eval.restore import EvalInputError, check_run_storage, find_job

    check_run_storage(args.target, args.job)
    job, run_dir = find_job(args.target, args.job)
    check_run_storage(args.target, args.job, job)  # here, before any worker starts
    outcome = run_on_cluster(command, args, job, run_dir)
    if "error" in outcome:
        raise EvalInputError(outcome["error"])
    return job, run_dir, outcome["ok"]


def run_on_cluster(command: str, args: argparse.Namespace, job, run_dir: Path) -> dict:
    """Launch `command` on one worker per host of the job's topology; host 0's result.

    Returns {"ok": result} or {"error": one-line message}; raises ConnectionError when no
    cluster can be reached and InfeasibleTopologyError when it cannot hold the job.
    """
    # Ray (through compat) is imported only here: `palm generate|eval` registers this
    # module's arguments, and a local run or an input error must not pay Ray's import first.
    from palm_platform.compiler_flags import init_args
    from palm_platform.ray.compat import kv_delete, kv_get
    from palm_platform.ray.launch import connect, launch
    topo = job.topology
    connect(args.address, start_local=topo.shape() if topo.local else None)
    key = f"{RESULT_PREFIX}/{job.name}/{command}/{time.time():.6f}"
    worker_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                   if k != "func"}
    launch(eval_worker, {"command": command, "args": worker_args, "job": job.model_dump(mode="json"),
                         "run_dir": str(Path(run_dir).resolve()), "result_key": key},
           shape=replace(topo.shape(), min_pods=None), run_name=f"{job.name}-{command}-{int(time.time())}",
           storage_path=str((Path(run_dir) / "ray").resolve()),
           max_failures=0, jax_init_timeout_s=int(job.faults.init_timeout_s),
           # the program the run trained with: its compiler flags, on TPU hosts (as palm run)
           libtpu_init_args=init_args(topo.effective_compiler_flags))
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
        if config["command"] == "generate":
            from palm_platform.eval.generate_cli import complete

            payload = {"ok": complete(run, args)}
        else:
            from palm_platform.eval.eval_cli import evaluate, quiet_harness

            quiet_harness()
            payload = {"ok": evaluate(run, args)}
    except EvalInputError as error:  # every host raises it alike (same inputs, same data)
        payload = {"error": str(error)}
    if jax.process_index() == 0:
        from palm_platform.ray.compat import kv_put

        kv_put(config["result_key"], json.dumps(payload, default=str).encode(), KV_NAMESPACE)
