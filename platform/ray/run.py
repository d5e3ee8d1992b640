"""`palm run JOB.yaml`: run a job file on the current Ray cluster (or the local fake-TPU one).

    palm run jobs/local-cpu.yaml                        # local: starts `palm cluster up` if needed
    ray job submit --working-dir . -- palm run jobs/palm540b.yaml
    ray job submit --working-dir . -- jobs/local-cpu.yaml   # job files are executable

The driver validates the job, checks the cluster can hold it, launches one Ray Train worker
per TPU host (platform/ray/worker.py), shows progress from the run's metrics file, and ends
with a summary (also `palm status RUN_DIR`).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (YAML)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, "
                        "else the local cluster of `palm cluster up`)")
    parser.add_argument("--direct", action="store_true",
                        help="run the train loop in this process, without Ray (one-host jobs)")


def run_dir_of(job) -> Path:
    return Path(job.run_dir) / job.name


def main(args: argparse.Namespace) -> int:
    from palm_platform.job import load_job_or_exit

    job = load_job_or_exit(args.job)
    from palm_platform.data.pipeline import DataConfigError, check_data

    try:  # a bad data path fails here, before any worker starts (and is never retried)
        check_data(job.data, Path.cwd())
    except DataConfigError as error:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2
    from palm_platform.train.init_from import InitFromError, preflight

    try:  # a fine-tune's source checkpoint and shapes, before any worker starts
        preflight(job)
    except InitFromError as error:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2
    run_dir = run_dir_of(job)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.direct:
        return run_direct(job, run_dir)
    return run_on_ray(job, run_dir, args.address)


def run_direct(job, run_dir: Path) -> int:
    """The same train loop, in this process; for one-host jobs, tests and benchmarks."""
    import os

    topo = job.topology
    if topo.num_hosts != 1:
        print(f"{job.name}: --direct runs one host; this job has {topo.num_hosts}", file=sys.stderr)
        return 2
    if topo.local:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={topo.chips_per_host}")
    from palm_platform.ray.worker import configure_logging
    from palm_platform.train.loop import Trainer

    configure_logging()
    trainer = Trainer(job, run_dir)
    try:
        trainer.run()
    finally:
        trainer.close()
    from palm_platform.status import print_summary

    print_summary(run_dir)
    return 0


def run_on_ray(job, run_dir: Path, address: str | None) -> int:
    from palm_platform.ray.feasibility import InfeasibleTopologyError
    from palm_platform.ray.launch import connect, launch
    from palm_platform.ray.topology import SliceShape, v4_topology_for_chips
    from palm_platform.ray.worker import train_worker
    from palm_platform.status import Progress, print_summary

    launched_at = time.time()  # goodput counts start-up from here, not from the first worker
    topo = job.topology
    shape = SliceShape(topo.pods, topo.hosts_per_pod, topo.chips_per_host)
    try:
        connect(address, start_local=shape if topo.local else None)
    except ConnectionError as error:
        print(f"{job.name}: {error}", file=sys.stderr)
        return 2
    progress = Progress(run_dir, total_steps=job.train.steps)
    stop = threading.Event()
    watcher = threading.Thread(target=progress.follow, args=(stop,), daemon=True)
    watcher.start()
    try:
        launch(
            train_worker, {"job": job.model_dump(mode="json"), "run_dir": str(run_dir.resolve()),
                           "launched_at": launched_at},
            pods=topo.pods, hosts_per_pod=topo.hosts_per_pod, chips_per_host=topo.chips_per_host,
            topology=topo.ici_topology or v4_topology_for_chips(topo.chips_per_pod),
            run_name=f"{job.name}-{int(time.time())}", storage_path=str((run_dir / "ray").resolve()),
            max_failures=job.faults.max_restarts, jax_init_timeout_s=int(job.faults.init_timeout_s),
        )
    except InfeasibleTopologyError as error:
        stop.set()  # before printing, so the progress bar does not interleave
        print(f"{job.name}: cannot start: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the run failed after its restarts: say so, with the cause
        stop.set()
        print(f"{job.name}: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        watcher.join(timeout=5)
    print_summary(run_dir)
    return 0
