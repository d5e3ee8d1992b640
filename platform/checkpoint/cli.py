"""`palm ckpt list DIR` and `palm ckpt verify DIR [STEP]`.

Exit codes: 0 ok; 1 a checkpoint is damaged (each damaged file is named); 2 the directory or
step does not exist.
"""

from __future__ import annotations

import argparse
import sys

from palm_platform.checkpoint.errors import CheckpointNotFound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="ckpt_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="steps, commit time, size, complete or not")
    listing.add_argument("directory", help="checkpoint directory (local path or gs://...)")
    checking = actions.add_parser(
        "verify", help="check files against the manifest (exit 1 on damage)"
    )
    checking.add_argument("directory", help="checkpoint directory (local path or gs://...)")
    checking.add_argument("step", nargs="?", type=int, help="one step (default: all complete ones)")
    checking.add_argument(
        "--sizes-only", action="store_true", help="skip the CRC32s (no data read)"
    )


def _human(size_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size_bytes < 1024 or unit == "TiB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1024
    raise AssertionError("unreachable")


def _list(directory: str) -> int:
    from palm_platform.checkpoint.inventory import list_checkpoints

    infos = list_checkpoints(directory)
    if not infos:
        print(f"{directory}: no checkpoints")
        return 0
    print(f"{'step':>10}  {'committed (UTC)':<19}  {'size':>10}  state")
    for info in infos:
        when = info.time.strftime("%Y-%m-%d %H:%M:%S") if info.time else "-"
        state = "complete" if info.complete else "incomplete (interrupted save, never restored)"
        if info.complete and not info.has_manifest:
            state += ", no manifest"
        print(f"{info.step:>10}  {when:<19}  {_human(info.size_bytes):>10}  {state}")
    return 0


def _verify(directory: str, step: int | None, *, checksums: bool) -> int:
    from palm_platform.checkpoint.verification import verify

    report = verify(directory, step, checksums=checksums)
    for step_report in report.steps:
        verdict = "ok" if not step_report.damage else "DAMAGED"
        print(f"step {step_report.step}: {verdict} ({step_report.method})")
        for damage in step_report.damage:
            print(f"  damaged: {damage}")
    for info in report.incomplete:
        print(f"step {info.step}: incomplete, ignored ({info.path.name})")
    if not report.steps:
        print(f"{directory}: no complete checkpoints to verify")
    print("ok" if report.ok else f"damaged: {len(report.damaged)} file(s)")
    return 0 if report.ok else 1


def main(args: argparse.Namespace) -> int:
    from palm_platform.storage.preflight import StorageConfigError, check_gcs_paths

    try:
        check_gcs_paths({"directory": args.directory})  # gs://: credentials, network, bucket
    except StorageConfigError as error:
        print(f"palm ckpt {args.ckpt_action}: {error}", file=sys.stderr)
        return 2
    try:
        if args.ckpt_action == "list":
            return _list(args.directory)
        return _verify(args.directory, args.step, checksums=not args.sizes_only)
    except CheckpointNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
