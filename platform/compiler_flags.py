"""libtpu/XLA compiler flags as part of the job: per-generation defaults, each with its source.

A job's `topology.compiler_flags` are merged over its TPU generation's defaults (below);
the result is what `palm plan` compiles with and what `palm run` gives the TPU hosts as
`LIBTPU_INIT_ARGS`. The same flags reach a compile in two ways, and both give the same
program (checked by tests/test_compiler_flags_tpu.py):

    LIBTPU_INIT_ARGS="--name=value ..."   read once, when libtpu initialises (TPU hosts)
    lowered.compile(compiler_options={name: value})   one compile (plan --compare, checks)

Jax-free on purpose: the job file imports it (mesh_config.py). The check that libtpu
accepts the flags is plan/compiler_flags_check.py.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

FlagValue = bool | int | float | str


@dataclass(frozen=True)
class DefaultFlag:
    value: FlagValue
    source: str  # where the value comes from: a config that sets it, or what was measured


# Per TPU generation (TopologySection.accelerator). A job overrides any of them by name.
DEFAULTS: dict[str, dict[str, DefaultFlag]] = {
    "tpu-v4": {
        # Without it every FSDP weight all-gather runs synchronously: on palm540b 870 GB per
        # chip per step, 3.22 s of a 15.72 s scheduled step (palm plan, before/after in
        # docs/operations.md).
        "xla_enable_async_all_gather": DefaultFlag(
            True, "MaxText MaxText/configs/2xv4-128.sh (and its other v4 configs): "
            'LIBTPU_INIT_ARGS="--xla_enable_async_all_gather=true"'),
    },
}

# Tried for palm540b's remaining exposed all-reduce (weight gradients all-reduced over `data`,
# docs/operations.md, "Compiler flags"), each alone over the default, on 540B with 2 layers (libtpu
# 0.0.52): xla_tpu_enable_all_reduce_scatter_fusion, xla_enable_async_all_reduce,
# xla_tpu_assign_all_reduce_scatter_layout: the same collectives, still synchronous. Tried
# over the default, 2026-12-04 (palm plan with the reduce-scatter fusions counted):
# - MaxText's REDUCE_SCATTER_FUSION (benchmarks/xla_flags_library.py:
#   xla_tpu_use_minor_sharding_for_major_trivial_input=true,
#   xla_tpu_relayout_group_size_threshold_for_reduce_scatter=1): on palm-tiny the down-
#   projection gradient becomes a reduce-scatter; on 540B with 2 layers every MLP gradient
#   becomes a whole all-reduce (17.5 -> 24.7 GB per chip, 0.397 -> 0.410 s scheduled). Worse.
# - the same + LAYOUT_FOR_ALL_REDUCE_SCATTER + DATA_PARALLEL_OVERLAP: the same as above.
# - xla_enable_async_reduce_scatter_fusion (palm-tiny): reduce-scatters stay synchronous.
# - xla_tpu_enable_windowed_einsum_for_reduce_scatter (540B, 2 layers): the same program.
# Not defaults: a flag earns its place here by a plan that shows it.

_NAME = re.compile(r"^xla_[a-z0-9_]+$")


class FlagSyntaxError(ValueError):
    """A flag written so that it cannot be passed to libtpu (the message says which and why)."""


def check_name_and_value(name: str, value: FlagValue) -> None:
    """Syntax only; whether libtpu knows the flag is plan/compiler_flags_check's job."""
    if not _NAME.match(name):
        raise FlagSyntaxError(f"compiler flag {name!r} is not a libtpu/XLA flag name "
                              "(lower case, starting xla_; write it without the leading --)")
    if isinstance(value, str) and (not value or re.search(r"\s", value)):
        raise FlagSyntaxError(f"compiler flag {name}: value {value!r} is empty or has spaces")


def effective(accelerator: str, overrides: dict[str, FlagValue]) -> dict[str, FlagValue]:
    """The generation's defaults with the job's own flags over them, sorted by name."""
    merged = {name: flag.value for name, flag in DEFAULTS.get(accelerator, {}).items()}
    merged.update(overrides)
    return dict(sorted(merged.items()))


def _text(value: FlagValue) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def init_args(flags: dict[str, FlagValue]) -> str:
    """`LIBTPU_INIT_ARGS` for these flags: "--name=value" separated by spaces."""
    return " ".join(f"--{name}={_text(value)}" for name, value in flags.items())


def compiler_options(flags: dict[str, FlagValue]) -> dict[str, str]:
    """The same flags as `compiler_options` of one compile (values as libtpu parses them)."""
    return {name: _text(value) for name, value in flags.items()}


def parse(text: str) -> dict[str, FlagValue]:
    """Flags written as on a command line ("--a=true --b=4"); a bare "--a" means true."""
    flags: dict[str, FlagValue] = {}
    for word in shlex.split(text):
        name, has_value, value = word.removeprefix("--").partition("=")
        parsed: FlagValue = True if not has_value else _typed(value)
        check_name_and_value(name, parsed)
        flags[name] = parsed
    return flags


def _typed(value: str) -> FlagValue:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def sources(accelerator: str) -> list[str]:
    """One line per default flag of a generation: name=value (source)."""
    return [f"{name}={_text(flag.value)} ({flag.source})"
            for name, flag in sorted(DEFAULTS.get(accelerator, {}).items())]
