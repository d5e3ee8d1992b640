"""`palm wandb workspace PROJECT`: create the project's W&B workspace (or print/write it).

Exit codes: 0 done; 2 bad input (no entity, no API key for a save); 1 W&B refused the save.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="wandb_action", required=True, metavar="ACTION")
    workspace = actions.add_parser(
        "workspace", help="create the project's workspace: loss/eval, tokens/s and MFU, "
        "goodput and badput, spikes/rollbacks/restarts, cross-pod bytes")
    workspace.add_argument("project", help="W&B project (the jobs' metrics.wandb_project)")
    workspace.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"),
                           help="W&B entity (team or user); default $WANDB_ENTITY")
    workspace.add_argument("--name", default=None, help="workspace name (default: 'palm training')")
    workspace.add_argument("--dry-run", action="store_true", help="print the panels, save nothing")
    workspace.add_argument("--output", type=Path, help="write the workspace definition (JSON) here, save nothing")


def main(args: argparse.Namespace) -> int:
    from palm_platform.metrics.wandb.workspace import (
        DEFAULT_NAME,
        build_workspace,
        panel_metrics,
        workspace_json,
    )

    offline = args.dry_run or args.output is not None
    if not args.entity and not offline:
        print("palm wandb workspace: no entity. Fix: pass --entity TEAM or set WANDB_ENTITY",
              file=sys.stderr)
        return 2
    if not offline and not os.environ.get("WANDB_API_KEY"):
        print("palm wandb workspace: WANDB_API_KEY is not set. Fix: export it (or use --dry-run)",
              file=sys.stderr)
        return 2
    workspace = build_workspace(args.project, args.entity or "ENTITY", args.name or DEFAULT_NAME)
    if args.output is not None:
        args.output.write_text(workspace_json(workspace) + "\n")
        print(f"wrote {args.output}")
    if args.dry_run:
        for section, title, metrics, regex in panel_metrics(workspace):
            print(f"{section}: {title}: {', '.join(metrics) or regex}")
    if offline:
        return 0
    try:
        workspace.save()
    except Exception as error:  # the server's answer, in one line
        print(f"palm wandb workspace: W&B refused the save: {str(error).splitlines()[0][:200]}",
              file=sys.stderr)
        return 1
    print(f"workspace saved: {workspace.url}")
    return 0
