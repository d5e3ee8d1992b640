"""Multi-host behaviour with real JAX processes: 2 processes x 4 CPU devices, gloo collectives.

Saved by 2 processes on (pod=2, data=2, model=2), restored by 1 process on (data=4, model=2),
and the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

from palm_platform.checkpoint import CheckpointConfig, Checkpointer, verify
from tests.support import checkpoint_worker as worker
from tests.support.paths import SUPPORT
from tests.support.processes import free_port, outputs_of, spawn

WORKER = SUPPORT / "checkpoint_worker.py"
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def run_cluster(mode: str, directory: Path, step: int, num_processes: int = 2) -> list[str]:
    """Run `num_processes` workers as one JAX cluster; return each one's output."""
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    port = free_port()
    procs = [spawn(WORKER, mode, directory, step, num_processes, i, port, env=env)
             for i in range(num_processes)]
    return outputs_of(procs, timeout=120)


def _data_bytes(process_dir: Path) -> int:
    return sum(p.stat().st_size for p in (process_dir / "d").iterdir())


def test_two_processes_each_write_only_their_shards_and_one_process_restores_on_another_mesh(
    tmp_path,
):
    outputs = run_cluster("save", tmp_path, step=7)
    assert all("SAVED 7" in out for out in outputs)

    state_dir = tmp_path / "7" / "state"
    per_process = [_data_bytes(state_dir / f"ocdbt.process_{i}") for i in range(2)]
    unique_bytes = sum(v.nbytes for v in worker.expected_state().values())
    # Every array is written once (replica 0 of each shard), split between the writers.
    assert sum(per_process) < 1.2 * unique_bytes
    assert all(0.3 * unique_bytes < b < 0.7 * unique_bytes for b in per_process), per_process
    assert verify(tmp_path).ok  # process 0's manifest covers both processes' files

    mesh = jax.make_mesh(*worker.RESTORE_MESH)
    checkpointer = Checkpointer(CheckpointConfig(directory=str(tmp_path)), directory=tmp_path)
    restored = checkpointer.restore(worker.abstract_state(mesh))
    checkpointer.close()
    assert restored.step == 7
    assert restored.data_state == {"next_index": 56}
    worker.check_restored(restored.train_state)


def test_one_process_save_is_restored_by_two_processes_on_another_mesh(tmp_path):
    mesh = jax.make_mesh(*worker.SAVE_MESH)
    checkpointer = Checkpointer(CheckpointConfig(directory=str(tmp_path)), directory=tmp_path)
    checkpointer.save(5, worker.sharded_state(mesh, 2), {"next_index": 40}, {"rollbacks": []})
    checkpointer.close()

    outputs = run_cluster("restore", tmp_path, step=5)
    assert all("RESTORED_OK 5" in out for out in outputs)
