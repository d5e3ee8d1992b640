"""Proof from the compiled program: with the v4 default flags, `palm plan`'s train step (palm-tiny
on 2 x v4:2x2x2, AOT on CPU) runs every weight and activation all-gather asynchronously, with
compute scheduled between its start and its done. Read from the HLO the plan saves, not from
the plan's own arithmetic."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from palm_platform.plan.hlo import _COMPUTE, arrays, parse_module
from tests.support.paths import TEST_JOBS

# `palm plan` compiles in a process of its own
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.usefixtures("libtpu")]
JOBS = TEST_JOBS
PALM = Path(sys.executable).parent / "palm"
INTEGER = ("s8", "s16", "s32", "u8", "u32", "pred")


def all_gathers(hlo: str) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """([(async start, compute instructions between it and its done)], [(sync, its shape)])."""
    computations, _, _ = parse_module(hlo)
    overlapped, sync = [], []
    for comp in computations.values():
        for k, inst in enumerate(comp.instructions):
            if inst.opcode == "all-gather":
                sync.append((inst.name, inst.shape))
            if inst.opcode == "all-gather-start":
                done = next(j for j, i in enumerate(comp.instructions)
                            if i.opcode == "all-gather-done" and inst.name in i.operands)
                between = comp.instructions[k + 1:done]
                overlapped.append((inst.name, sum(i.opcode in _COMPUTE for i in between)))
    return overlapped, sync


def test_every_weight_and_activation_all_gather_is_async_with_compute_in_between(tmp_path):
    hlo_path = tmp_path / "step.hlo"
    result = subprocess.run([PALM, "plan", str(JOBS / "plan-tiny.yaml"), "--save-hlo",
                             str(hlo_path)], capture_output=True, text=True, timeout=900,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiler flags: --xla_enable_async_all_gather=true" in result.stdout
    overlapped, sync = all_gathers(hlo_path.read_text())
    # FSDP weight gathers in the layer loops (forward, remat, backward), the embedding's, and
    # the model-axis activation gathers: all async, none with an empty window.
    assert len(overlapped) >= 10
    assert all(compute > 0 for _, compute in overlapped), overlapped
    # What stays synchronous: the microbatch's token ids re-laid over the data axis (a few
    # KiB of s32 per step): integers, no weights or activations.
    for name, shape in sync:
        (dtype, dims), = arrays(shape)
        assert dtype in INTEGER and 4 * math.prod(dims) < 64 * 1024, (name, shape)
