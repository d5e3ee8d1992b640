"""`palm model-info PRESET`: parameter count and training FLOPs, without allocating anything."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from palm.config import PRESETS

    parser.add_argument("preset", choices=sorted(PRESETS), help="model preset")


def main(args: argparse.Namespace) -> int:
    from palm.config import PRESETS
    from palm.flops import train_flops_per_token

    config = PRESETS[args.preset]
    print(f"preset: {args.preset}")
    print(f"params: {config.num_params()}")
    print(f"train_flops_per_token: {train_flops_per_token(config)}")
    return 0
