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
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the capture (default 1800)")


class ProfileInputError(ValueError):
    """Bad input: one line, exit 2 (the run is not touched)."""


def main(args: argparse.Namespace) -> int:
    run = Path(args.run)
    try:
        if not run.is_dir():
            raise ProfileInputError(f"{run}: no such run folder (pass RUN_DIR/NAME)")
        first = args.capture
        if not args.report:
            first = request_capture(run, args)
        print_report(run, first, as_json=args.json)
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
        connect(listening.get("gcs_address"))
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


def print_report(run: Path, first: int | None, *, as_json: bool) -> None:
    from palm_platform.profile.report import build_report, format_report
    from palm_platform.profile.trace import TraceError

    try:
        report = build_report(run, first)
    except TraceError as error:
        raise ProfileInputError(str(error)) from None
    print(json.dumps(report) if as_json else format_report(report))
