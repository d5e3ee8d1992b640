"""`palm profile RUN_DIR/NAME`: trace N steps of a running job on chosen hosts, then report.

    palm profile runs/local-cpu                    trace 5 steps on every host, then the report
    palm profile runs/local-cpu --steps 3 --hosts 0,2 --at-step 40
    palm profile runs/local-cpu --report [--json]  the newest capture's breakdown, again

The request goes through the channel the run's host 0 listens on (profile/request.py: Ray's GCS
store for `palm run` and `ray job submit`, a file for `palm run --direct`); host 0 reads it every
`profile.poll_every` steps and every host starts at the step it broadcasts (profile/capture.py).
The job keeps training whatever this command does: a request it cannot serve gets one line
here and exit 2. The breakdown is profile/trace.py's, per host, with a straggler line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run folder, RUN_DIR/NAME")
    parser.add_argument("--steps", type=int, default=5, help="steps to trace (default 5)")
    parser.add_argument("--hosts", default="all", help="all (default) or host indices: 0,5")
    parser.add_argument("--at-step", type=int, default=None,
                        help="first traced step (default: the first the hosts can agree on)")
    parser.add_argument("--report", action="store_true",
                        help="no capture: the breakdown of the newest (or --capture) capture")
    parser.add_argument("--capture", type=int, default=None,
                        help="with --report: the capture that starts at this step")
    parser.add_argument("--json", action="store_true", help="the report as one JSON object")
    parser.add_argument("--plan", action="store_true",
                        help="also compile the job's plan for the hardware the run used (CPU "
                        "devices for a local run) and set predicted beside measured")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the capture (default 1800)")


class ProfileInputError(ValueError):
    """Bad input: one line, exit 2 (the run is not touched)."""


def main(args: argparse.Namespace) -> int:
    run = Path(args.run)
    try:
        if "://" in args.run:
            raise ProfileInputError(f"{args.run}: a run folder is local (RUN_DIR/NAME where "
                                    "`palm run` writes metrics.jsonl; only checkpoints and token "
                                    "stores go to gs://): pass that folder")
        if not run.is_dir():
            raise ProfileInputError(f"{run}: no such run folder (pass RUN_DIR/NAME)")
        first = args.capture
        if args.plan:
            job = prepare_plan(run)
        if not args.report:
            first = request_capture(run, args)
        print_report(run, first, as_json=args.json, job=job if args.plan else None)
    except ProfileInputError as error:
        print(f"palm profile: {error}", file=sys.stderr)
        return 2
    return 0


def parse_hosts(text: str) -> str | list[int]:
    if text == "all":
        return "all"
    try:
        return [int(h) for h in text.split(",")]
    except ValueError:
        raise ProfileInputError(f"--hosts {text}: expected all or indices like 0,5") from None


def open_channel(run: Path, listening: dict):
    """The channel host 0 reads, if that loop still runs (else ProfileInputError)."""
    from palm_platform.profile.request import FileChannel, KvChannel

    not_running = ProfileInputError(f"{run}: not running (no train loop is listening; a "
                                    "job file's profile: section traces fixed steps)")
    if listening["channel"] == "file":
        try:
            os.kill(int(listening["pid"]), 0)
        except (OSError, ValueError):
            raise not_running from None
        return FileChannel(run)
    from palm_platform.ray.launch import connect

    try:
        connect(listening.get("gcs_address"), log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - no cluster: the run cannot be running
        raise ProfileInputError(f"{run}: not running (its Ray cluster at "
                                f"{listening.get('gcs_address')} is unreachable: "
                                f"{type(error).__name__})") from None
    channel = KvChannel(listening["key"])
    if not channel.listening():
        raise not_running
    return channel


def request_capture(run: Path, args: argparse.Namespace) -> int:
    """Ask the run, wait for its agreed steps and the end of the capture; -> its first step."""
    from palm_platform.profile.request import read_listening
    from palm_platform.ray.interrupt import last_logged_step

    listening = read_listening(run)
    if listening is None:
        raise ProfileInputError(f"{run}: not running (no train loop is listening; a job "
                                "file's profile: section traces fixed steps)")
    hosts = parse_hosts(args.hosts)
    count = int(listening["hosts"])
    if hosts != "all":
        bad = [h for h in hosts if not 0 <= h < count]
        if bad:
            raise ProfileInputError(f"--hosts: host {bad[0]} is out of range (this run has "
                                    f"hosts 0 to {count - 1})")
    if not 1 <= args.steps <= 100:
        raise ProfileInputError(f"--steps {args.steps}: expected 1 to 100")
    at = last_logged_step(run)
    if args.at_step is not None and at is not None and args.at_step <= at:
        raise ProfileInputError(f"--at-step {args.at_step} has already passed (the run is at "
                                f"step {at})")
    channel = open_channel(run, listening)
    request_id = uuid.uuid4().hex[:8]
    channel.post({"id": request_id, "steps": args.steps, "hosts": hosts,
                  "at_step": args.at_step})
    print(f"{run.name}: asked for {args.steps} traced steps on "
          f"{'every host' if hosts == 'all' else 'hosts ' + args.hosts}; host 0 reads requests "
          f"every {listening.get('poll_every', '?')} steps", file=sys.stderr)
    deadline, agreed = time.monotonic() + args.timeout, False
    while time.monotonic() < deadline:
        answer = channel.answer()
        if answer is not None and answer.get("id") == request_id:
            if answer["state"] == "refused":
                raise ProfileInputError(f"{run.name}: {answer['reason']}")
            if answer["state"] == "agreed" and not agreed:
                agreed = True
                print(f"{run.name}: every host agreed to trace steps {answer['first']}-"
                      f"{answer['first'] + answer['steps'] - 1}", file=sys.stderr)
            if answer["state"] == "done":
                wait_for_hosts(run, answer["first"], answer["hosts"], deadline)
                return int(answer["first"])
        if read_listening(run) != listening:  # the loop ended (or restarted) before serving it
            raise ProfileInputError(f"{run.name}: the run's train loop ended before the capture "
                                    "finished; ask again once it runs (`palm status`)")
        time.sleep(0.5)
    raise ProfileInputError(f"{run.name}: no capture within {args.timeout:.0f} s (is the run "
                            "still stepping? `palm status`)")


def wait_for_hosts(run: Path, first: int, hosts: list[int], deadline: float) -> None:
    """The other hosts stop their traces a moment after host 0 answers."""
    from palm_platform.profile.request import host_folder

    while time.monotonic() < deadline:
        if all((host_folder(run, first, h) / "steps.json").exists() for h in hosts):
            return
        time.sleep(0.2)


def prepare_plan(run: Path):
    """The run's job (job.json); for a local run, this process gets its count of CPU devices
    (before JAX is imported) so that the plan compiles for the hardware the run used."""
    from palm_platform.eval.restore import EvalInputError, read_job_record
    from palm_platform.run_dir import RunDir

    record = RunDir(run).job_record
    if not record.exists():
        raise ProfileInputError(f"{record}: missing (the run writes it when it starts); "
                                "--plan needs the job the run trained")
    try:
        job = read_job_record(record)
    except EvalInputError as error:
        raise ProfileInputError(str(error)) from None
    topo = job.topology
    if topo.local:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={topo.pods * topo.chips_per_pod}")
    return job


def predicted(job, first_step: int) -> dict:
    """The plan of the traced steps' batch, on the run's hardware (plan/on_devices.py on CPU;
    `palm plan`'s TPU v4 compile and datasheet otherwise)."""
    batch = job.train.batch_size_at(first_step - 1)
    if job.topology.local:
        import jax

        from palm_platform.plan.on_devices import measured_hardware, plan_on_devices

        devices = jax.devices()[: job.topology.pods * job.topology.chips_per_pod]
        return plan_on_devices(job, devices, batch, measured_hardware())
    from palm_platform.plan.report import plan

    report = plan(job)  # TPU v4: the compile and the datasheet of `palm plan` (its largest batch)
    times = report.step_time or {}
    return {"devices": report.devices, "platform": "tpu", "batch": report.global_batch,
            "seconds": {"compute": times.get("compute_s", 0.0),
                        "collectives": times.get("exposed_s", 0.0)},
            "step_s": times.get("scheduled_s", report.predicted_step_s),
            "formula_flops_per_step": report.formula_flops_per_step,
            "hardware": {"peak_flops": 275e12}, "mfu": report.mfu_range.get("scheduled")}


def print_report(run: Path, first: int | None, *, as_json: bool, job=None) -> None:
    from palm_platform.profile.report import build_report, compare, format_report
    from palm_platform.profile.trace import TraceError

    try:
        report = build_report(run, first)
    except TraceError as error:
        raise ProfileInputError(str(error)) from None
    if job is not None:
        report["plan"] = predicted(job, report["first_step"])
        report["comparison"] = compare(report, report["plan"])
    # flushed here: a Ray driver's exit can skip the interpreter's own flush of a piped stdout
    print(json.dumps(report) if as_json else format_report(report), flush=True)
