"""`palm run JOB.yaml`: run a job file on the current Ray cluster (or the local fake-TPU one).

    palm run jobs/local-cpu.yaml                        # local: starts `palm cluster up` if needed
    ray job submit --working-dir . -- palm run --submit-dir "$PWD" jobs/local-cpu.yaml
    ray job submit --working-dir . -- jobs/palm540b.yaml   # job files are executable

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
    parser.add_argument("--submit-dir", default=None,
                        help="under `ray job submit --working-dir .`: the directory submitted "
                        "from (pass \"$PWD\"); relative output paths resolve there instead of "
                        "in Ray's per-session copy (see ray/submit_paths.py)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Ray's and JAX's lines from the workers (always kept in "
                        "RUN_DIR/NAME/logs/workers.log)")


def run_dir_of(job) -> Path:
    return Path(job.run_dir) / job.name


def main(args: argparse.Namespace) -> int:
    from palm_platform.job import load_job_or_exit

    job = load_job_or_exit(args.job)
    from palm_platform.ray.submit_paths import EphemeralOutputError, place_outputs

    try:  # outputs never inside Ray's uploaded copy of the working directory
        job = place_outputs(job, args.job, args.submit_dir)
    except EphemeralOutputError as error:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2
    from palm_platform.data.pipeline import DataConfigError, check_data
    from palm_platform.storage.preflight import StorageConfigError, check_storage

    try:  # gs:// paths: gcsfs, credentials, buckets, emulator variables (storage/preflight.py)
        check_storage(job)
    except StorageConfigError as error:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2

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
    from palm_platform.ray.compiler_flags_preflight import CompilerFlagsError, check_compiler_flags

    try:  # an unknown flag would end libtpu on every host (compiler_flags_check.py)
        check_compiler_flags(job)
    except CompilerFlagsError as error:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2
    run_dir = run_dir_of(job)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.direct:
        return run_direct(job, run_dir, args.job)
    return run_on_ray(job, run_dir, args.address, args.job, verbose=args.verbose)


def run_direct(job, run_dir: Path, job_file: str = "") -> int:
    """The same train loop, in this process; for one-host jobs, tests and benchmarks."""
    import os

    topo = job.topology
    if topo.num_hosts != 1:
        print(f"{job.name}: --direct runs one host; this job has {topo.num_hosts}", file=sys.stderr)
        return 2
    from palm_platform.ray.prepare_first import prepare_if_needed

    code = prepare_if_needed(job, job_file or job.name, Path.cwd(), address=None, on_cluster=False)
    if code:
        return code
    if topo.local:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={topo.chips_per_host}")
    else:  # a TPU host: the job's compiler flags, as the Ray workers get them
        from palm_platform.compiler_flags import init_args

        os.environ["LIBTPU_INIT_ARGS"] = init_args(topo.effective_compiler_flags)
    from palm_platform.ray.worker import configure_logging
    from palm_platform.train.loop import Trainer

    configure_logging()
    trainer = Trainer(job, run_dir)
    from palm_platform.data.quality import report_data_quality

    report_data_quality(trainer.setup)
    from palm_platform.supervise.preemption import Preempted

    try:
        trainer.run()
    except Preempted as preempted:  # SIGTERM: the step is saved; a rerun resumes from it
        trainer.stopped(preempted.step)
        print(f"{job.name}: preempted at step {preempted.step}; re-run the same command to "
              "resume", file=sys.stderr)
        return 143
    finally:
        trainer.close()
    from palm_platform.metrics.status import print_summary

    print_summary(run_dir)
    return 0


def run_on_ray(job, run_dir: Path, address: str | None, job_file: str = "",
               verbose: bool = False) -> int:
    from palm_platform.ray.feasibility import InfeasibleTopologyError

    try:
        from palm_platform.ray.compat import route_worker_output
        from palm_platform.ray.launch import connect, launch
    except RuntimeError as error:  # compat.py: a Ray or JAX release it was not written for
        print(f"{job.name}: cannot start: {error}", file=sys.stderr)
        return 2
    from palm_platform.compiler_flags import init_args
    from palm_platform.ray.worker_output import WorkerOutput

    # The workers' lines: all to the run's log file, palm's warnings to the terminal.
    output = WorkerOutput(run_dir / "logs", verbose=verbose)
    route_worker_output(output.handle)
    from palm_platform.metrics.status import Progress, print_summary
    from palm_platform.ray.worker import train_worker

    launched_at = time.time()  # goodput counts start-up from here, not from the first worker
    # Before connecting: a `ray job submit` driver's working directory (Ray's per-session
    # copy) can be gone once ray.init has run, and Path.cwd() then raises.
    base_dir = Path.cwd()
    topo = job.topology
    shape = topo.shape()
    from palm_platform.cluster.local import ClusterStateError

    try:
        cluster_address = connect(address, start_local=shape if topo.local else None)
    except (ConnectionError, ClusterStateError) as error:
        print(f"{job.name}: {error}", file=sys.stderr)
        return 2
    from palm_platform.ray.prepare_first import prepare_if_needed

    # The token store first, on the cluster's CPUs, when it is missing or stale.
    code = prepare_if_needed(job, job_file or job.name, base_dir, address=cluster_address,
                             on_cluster=True)
    if code:
        return code
    progress = Progress(run_dir, total_steps=job.train.steps, restart_cause=output.restart_cause)
    stop = threading.Event()
    watcher = threading.Thread(target=progress.follow, args=(stop,), daemon=True)
    watcher.start()
    from palm_platform.ray.interrupt import InterruptHandler, exit_code, resume_message, stop_key

    key = stop_key(job.name, launched_at)  # Ctrl-C: every worker stops at one step (interrupt.py)
    # The live view goes on after a Ctrl-C: the last steps and the run's goodput are shown.
    interrupt = InterruptHandler(key, run_dir)
    from palm_platform.supervise.preemption import preempted_since

    try:
        with interrupt:
            preempted_at = None
            while True:  # again after each preemption, which saved its step (preemption.py)
                started = time.time()
                launch(
                    train_worker, {"job": job.model_dump(mode="json"),
                                   "run_dir": str(run_dir.resolve()),
                                   "launched_at": launched_at, "stop_key": key},
                    shape=shape, run_name=f"{job.name}-{int(time.time())}",
                    storage_path=str((run_dir / "ray").resolve()),
                    max_failures=job.faults.max_restarts,
                    jax_init_timeout_s=int(job.faults.init_timeout_s),
                    # JAX declares a silent peer dead (and aborts everyone) after this; later
                    # than the watchdog, which names the stuck host and restarts cleanly.
                    jax_heartbeat_timeout_s=int(job.faults.hang_timeout_s) + 30,
                    resize_check_s=topo.resize_check_s,  # elastic pods
                    preimport=("palm_platform.train.loop",),  # train_worker's imports
                    libtpu_init_args=init_args(topo.effective_compiler_flags),  # TPU hosts
                )
                step = preempted_since(run_dir, started)
                if interrupt.signum is not None or step is None or step == preempted_at:
                    break  # done, interrupted, or preempted twice at one step: no progress
                preempted_at = step
    except InfeasibleTopologyError as error:
        stop.set()  # and let the bar finish its line, so the message gets its own line
        watcher.join(timeout=5)
        from palm_platform.ray.host_loss import (
            host_loss_message,
            lost_tpu_hosts,
            trained_steps_since,
        )

        trained = trained_steps_since(run_dir, launched_at)
        if trained is None:
            print(f"{job.name}: cannot start: {error}", file=sys.stderr)
        else:  # a host went away after training started: not a start-up problem
            import ray

            print(host_loss_message(job.name, trained, lost_tpu_hosts(ray.nodes()), str(error)),
                  file=sys.stderr)
        return 1
    except Exception as error:  # the run failed after its restarts: say so, with the cause
        stop.set()
        watcher.join(timeout=5)
        from palm_platform.ray.host_loss import trained_steps_since
        from palm_platform.yaml_safe import one_line

        trained = trained_steps_since(run_dir, launched_at)
        resume = "" if trained is None else (
            f" after training to step {trained}. Re-run the same command to resume from the "
            "newest checkpoint")
        print(one_line(f"{job.name}: failed: {type(error).__name__}: {error}", 500) + resume,
              file=sys.stderr)
        return 1
    finally:
        stop.set()
        watcher.join(timeout=5)
        output.close()
    if interrupt.signum is not None:
        print(f"{job.name}: {resume_message(run_dir, key)}", file=sys.stderr)
        return exit_code(interrupt.signum)
    print_summary(run_dir)
    return 0
