"""Each host reads the rows of its own batch blocks (data/global_array.py): with a model axis
that spans processes, as palm540b's 12-way model axis spans TPU hosts, both processes read
the whole batch and the global array is still the batch; with the local layout, each reads
its half, as before. Two real JAX processes (gloo) of 2 CPU devices each."""

from __future__ import annotations

import os

import pytest

from tests.support.paths import SUPPORT
from tests.support.processes import free_port, outputs_of, result_of, spawn

WORKER = SUPPORT / "rows_worker.py"
pytestmark = [pytest.mark.multiprocess]
BATCH = [[3 * g, 3 * g + 1, 3 * g + 2] for g in range(4)]


def _run(layout: str) -> list[dict]:
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [spawn(WORKER, layout, i, port, env=env) for i in range(2)]
    return [result_of(out) for out in outputs_of(procs, timeout=120)]


def test_a_model_axis_across_hosts_gives_both_hosts_every_block_and_the_same_batch():
    for result in _run("spanning"):
        assert (result["blocks"], result["mine"], result["rows"]) == (2, [0, 1], [0, 1, 2, 3])
        assert result["shape"] == [4, 3] and result["gathered"] == BATCH


def test_the_local_layout_splits_the_batch_in_halves_as_before():
    first, second = _run("contiguous")
    assert (first["mine"], first["rows"]) == ([0], [0, 1])
    assert (second["mine"], second["rows"]) == ([1], [2, 3])
    assert first["gathered"] == second["gathered"] == BATCH
