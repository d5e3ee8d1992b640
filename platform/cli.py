"""The `palm` command: train PaLM-family models on TPU v4 pods with Ray.

Each subcommand lives in the module that owns its concern. A subcommand module exposes
`add_arguments(parser)` and `main(args) -> int`, and is imported only when its subcommand
runs, so `palm --help` never imports JAX or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Keep sorted by the order a user meets them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "model-info": ("palm_platform.model_info", "parameter count and training FLOPs of a preset"),
    "run": ("palm_platform.ray.run", "run a job file on Ray (local fake-TPU cluster or TPU pods)"),
    "status": ("palm_platform.metrics.status", "progress and summary of a running or finished job"),
    "plan": (
        "palm_platform.plan.report",
        "compile a job for its real TPU topology: memory, FLOPs, MFU",
    ),
    "profile": (
        "palm_platform.commands.profile",
        "trace steps of a running job on chosen hosts; where each step's time went",
    ),
    "ckpt": ("palm_platform.checkpoint.cli", "list or verify checkpoints"),
    "tokenizer": ("palm_platform.data.tokenizer_cli", "train or inspect a SentencePiece tokenizer"),
    "data": (
        "palm_platform.commands.data",
        "prepare a job's token store on Ray, or look inside one",
    ),
    "cluster": (
        "palm_platform.cluster.local",
        "bring a local fake-TPU Ray cluster up, down, or show it",
    ),
    "wandb": ("palm_platform.metrics.wandb.cli", "create the project's W&B workspace (dashboards)"),
    "gcs-emulator": (
        "palm_platform.storage.emulator",
        "a local GCS server for gs:// paths (tests, demo)",
    ),
    "generate": ("palm_platform.eval.generate_cli", "continue prompts with a trained checkpoint"),
    "eval": (
        "palm_platform.eval.eval_cli",
        "score a checkpoint on lm-eval-harness tasks, or memorization",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="palm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module of the command that runs
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_main=module.main)
    args = parser.parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
