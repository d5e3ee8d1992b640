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
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, "
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
    from palm_platform.run_dir import RunDir

    return RunDir.of(job).path


def main(args: argparse.Namespace) -> int:
    from palm_platform.job import load_job_or_exit

    job = load_job_or_exit(args.job)
    from palm_platform.ray.submit_paths import EphemeralOutputError, place_outputs

    try:  # outputs never inside Ray's uploaded copy of the working directory
        job = place_outputs(job, args.job, args.submit_dir)
    except EphemeralOutputError as error:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2
    error = _preflight_error(job)
    if error is not None:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2
    run_dir = run_dir_of(job)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.direct:
        return run_direct(job, run_dir, args.job)
    return run_on_ray(job, run_dir, args.address, args.job, verbose=args.verbose)


def _preflight_error(job) -> Exception | None:
    """What would fail on the workers, found before any starts (and never retried)."""
    from palm_platform.data.pipeline import DataConfigError, check_data
    from palm_platform.ray.compiler_flags_preflight import CompilerFlagsError, check_compiler_flags
    from palm_platform.storage.preflight import StorageConfigError, check_storage
    from palm_platform.train.init_from import InitFromError, preflight

    checks = (
        # gs:// paths: gcsfs, credentials, buckets, emulator variables (storage/preflight.py)
        (lambda: check_storage(job), StorageConfigError),
        (lambda: check_data(job.data, Path.cwd()), DataConfigError),  # a bad data path
        (lambda: preflight(job), InitFromError),  # a fine-tune's source checkpoint and shapes
        # an unknown flag would end libtpu on every host (plan/compiler_flags_check.py)
        (lambda: check_compiler_flags(job), CompilerFlagsError),
    )
    for check, errors in checks:
        try:
            check()
        except errors as error:
            return error
    return None


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
        import jax

        # JAX read JAX_PLATFORMS when the preflight imported it: without this it would still
        # look for every platform, and libtpu's start-up lines reached the terminal.
        jax.config.update("jax_platforms", "cpu")
    else:  # a TPU host: the job's compiler flags, as the Ray workers get them
        from palm_platform.compiler_flags import init_args

        os.environ["LIBTPU_INIT_ARGS"] = init_args(topo.effective_compiler_flags)
    from palm_platform.ray.worker import configure_logging
    from palm_platform.train.loop import Trainer

    configure_logging()
    from palm_platform.data.read_failure import store_error_in

    try:
        trainer = Trainer(job, run_dir)
    except Exception as error:  # a damaged store met at set-up: one line and exit 2
        if store_error_in(error) is None:
            raise
        print(f"{job.name}: stopped: {store_error_in(error)}", file=sys.stderr)
        return 2
    from palm_platform.data.quality import report_data_quality

    report_data_quality(trainer.setup)
    from palm_platform.hook_protocol import Preempted

    try:
        trainer.run()
    except Preempted as preempted:  # SIGTERM: the step is saved; a rerun resumes from it
        trainer.stopped(preempted.step)
        print(f"{job.name}: preempted at step {preempted.step}; re-run the same command to "
              "resume", file=sys.stderr)
        return 143
    except Exception as error:  # a damaged store: one line and exit 2, no traceback
        from palm_platform.data.read_failure import store_error_in

        if store_error_in(error) is None:
            raise
        print(f"{job.name}: stopped: {store_error_in(error)}", file=sys.stderr)
        return 2
    finally:
        trainer.close()
    from palm_platform.metrics.status import print_summary

    print_summary(run_dir)
    return 0


def run_on_ray(job, run_dir: Path, address: str | None, job_file: str = "",
               verbose: bool = False) -> int:
    try:  # the doors to Ray's, JAX's and Orbax's internals check their releases on import
        from palm_platform.compat import jax as _jax_door  # noqa: F401
        from palm_platform.compat import orbax as _orbax_door  # noqa: F401
        from palm_platform.compat.ray import route_worker_output
    except RuntimeError as error:  # compat/: a release a door was not written for
        print(f"{job.name}: cannot start: {error}", file=sys.stderr)
        return 2
    from palm_platform.metrics.status import Progress, print_summary
    from palm_platform.ray.interrupt import (
        InterruptHandler,
        exit_code,
        forget_launch,
        resume_message,
        stop_key,
    )
    from palm_platform.ray.worker_output import WorkerOutput
    from palm_platform.run_dir import RunDir

    # The workers' lines: all to the run's log file, palm's warnings to the terminal.
    output = WorkerOutput(RunDir(run_dir).logs, verbose=verbose)
    route_worker_output(output.handle)
    launched_at = time.time()  # goodput counts start-up from here, not from the first worker
    code = _connect_and_prepare(job, address, job_file)
    if code:
        return code
    view = _LiveView(Progress(run_dir, total_steps=job.train.steps,
                              restart_cause=output.restart_cause))
    key = stop_key(job.name, launched_at)  # Ctrl-C: every worker stops at one step (interrupt.py)
    # The live view goes on after a Ctrl-C: the last steps and the run's goodput are shown.
    interrupt = InterruptHandler(key, run_dir)
    from palm_platform.supervise.restart_account import preempted_since

    try:
        with interrupt:
            preempted_at = None
            # Again after an elastic job's preemption, which saved its step
            # (checkpoint/preemption.py); a fixed-size job's group restarts in place instead.
            while True:
                started = time.time()
                with _grow_back_monitor(job, run_dir, started):
                    _launch_workers(job, run_dir, launched_at, key)
                step = preempted_since(run_dir, started)
                if interrupt.signum is not None or step is None or step == preempted_at:
                    break  # done, interrupted, or preempted twice at one step: no progress
                preempted_at = step
    except Exception as error:  # noqa: BLE001 - every failure becomes one message, exit 1
        view.finish()  # and let the bar finish its line, so the message gets its own line
        if _data_error(job, run_dir, launched_at):
            return 2
        _print_failure(job, run_dir, launched_at, error)
        return 1
    finally:
        view.finish()
        output.close()
        resumed_at = resume_message(run_dir, key) if interrupt.signum is not None else ""
        forget_launch(key)  # the launch's keys in Ray's GCS store
    if interrupt.signum is not None:
        print(f"{job.name}: {resumed_at}", file=sys.stderr)
        return exit_code(interrupt.signum)
    if _data_error(job, run_dir, launched_at):  # the workers stopped on a damaged store
        return 2
    print_summary(run_dir)
    return 0


def _data_error(job, run_dir: Path, launched_at: float) -> bool:
    """Print the damaged-store line a worker recorded in this launch (data/read_failure.py)."""
    from palm_platform.data.read_failure import recorded

    line = recorded(run_dir, launched_at)
    if line:
        print(f"{job.name}: stopped: {line}", file=sys.stderr)
    return line is not None


def _launch_workers(job, run_dir: Path, launched_at: float, stop_key: str) -> None:
    """One train worker per TPU host, launched as the job says (launch_spec.py)."""
    from palm_platform.ray.launch import launch
    from palm_platform.ray.launch_spec import LaunchSpec
    from palm_platform.ray.worker import train_worker
    from palm_platform.ray.worker_config import WorkerConfig

    config = WorkerConfig(job=job.model_dump(mode="json"), run_dir=str(run_dir.resolve()),
                          launched_at=launched_at, stop_key=stop_key)
    spec = LaunchSpec.for_job(job, run_dir, preimport=("palm_platform.train.loop",))
    launch(train_worker, config.model_dump(mode="json"), spec)  # preimport: train_worker's


def _grow_back_monitor(job, run_dir: Path, started: float):
    """An elastic job: returned pods become a preemption notice, so every host saves one
    agreed step and this loop launches the group again at the larger size (ray/resize.py).
    Other jobs: nothing to watch."""
    import contextlib

    topo = job.topology
    if not topo.elastic:
        return contextlib.nullcontext()
    from palm_platform.ray.resize import GrowBackMonitor, notice_group

    def notice(pods_now: int, pods_trained: int) -> None:
        print(f"{job.name}: {pods_now} pods available, the run trains on {pods_trained}: "
              "every host saves one agreed step, then the run grows back", file=sys.stderr,
              flush=True)
        if not notice_group():
            print(f"{job.name}: no train worker took the notice; the run goes on on "
                  f"{pods_trained} pod(s)", file=sys.stderr, flush=True)

    return GrowBackMonitor(topo.shape(), run_dir, started, notice, poll_s=topo.resize_check_s)


def _connect_and_prepare(job, address: str | None, job_file: str) -> int:
    """Attach to the cluster (starting the local one for a local job), then prepare the token
    store on its CPUs when it is missing or stale; 0, else the exit status."""
    from palm_platform.cluster.local import ClusterStateError
    from palm_platform.ray.launch import connect
    from palm_platform.ray.prepare_first import prepare_if_needed

    # Before connecting: a `ray job submit` driver's working directory (Ray's per-session
    # copy) can be gone once ray.init has run, and Path.cwd() then raises.
    base_dir = Path.cwd()
    topo = job.topology
    try:
        cluster_address = connect(address, start_local=topo.shape() if topo.local else None)
    except (ConnectionError, ClusterStateError) as error:
        print(f"{job.name}: {error}", file=sys.stderr)
        return 2
    return prepare_if_needed(job, job_file or job.name, base_dir, address=cluster_address,
                             on_cluster=True)


class _LiveView:
    """The progress bar, following the run's metrics file on a thread until `finish()`."""

    def __init__(self, progress):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=progress.follow, args=(self._stop,), daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _print_failure(job, run_dir: Path, launched_at: float, error: Exception) -> None:
    """One line: the cluster could not hold the job, a host went away after training
    started, or the run failed after its restarts (with how to resume)."""
    from palm_platform.ray.feasibility import InfeasibleTopologyError
    from palm_platform.ray.host_loss import trained_steps_since
    from palm_platform.yaml_safe import one_line

    trained = trained_steps_since(run_dir, launched_at)
    if isinstance(error, InfeasibleTopologyError):
        if trained is None:
            print(f"{job.name}: cannot start: {error}", file=sys.stderr)
            return
        import ray  # a host went away after training started: not a start-up problem
        from palm_platform.ray.host_loss import host_loss_message, lost_tpu_hosts

        print(host_loss_message(job.name, trained, lost_tpu_hosts(ray.nodes()), str(error)),
              file=sys.stderr)
        return
    resume = "" if trained is None else (
        f" after training to step {trained}. Re-run the same command to resume from the "
        "newest checkpoint")
    print(one_line(f"{job.name}: failed: {type(error).__name__}: {error}", 500) + resume,
          file=sys.stderr)
