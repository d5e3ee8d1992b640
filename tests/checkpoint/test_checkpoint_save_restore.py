"""Save and restore in one process (8 CPU devices): async ordering, resharding, errors."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palm_platform.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    CheckpointNotFound,
    checkpoint_path,
    list_checkpoints,
)
from palm_platform.compat.orbax import atomicity  # Orbax's commit step, patched below
from tests.support import checkpoint_worker as worker


def _checkpointer(directory, **overrides) -> Checkpointer:
    config = CheckpointConfig(directory=str(directory), **({"every_steps": 10} | overrides))
    return Checkpointer(config, directory=directory)


def test_restore_returns_train_state_data_state_and_ledger_of_the_newest_step(tmp_path):
    mesh = jax.make_mesh(*worker.SAVE_MESH)
    checkpointer = _checkpointer(tmp_path)
    for step in (10, 20):
        ledger = {"rollbacks": [{"from": 15, "to": 10}], "skipped": [[100, 300]]}
        checkpointer.save(step, worker.sharded_state(mesh, 2), {"next_index": step}, ledger)
    restored = checkpointer.restore(worker.abstract_state(jax.make_mesh(*worker.SAVE_MESH)))
    checkpointer.close()
    assert restored.step == 20
    assert restored.data_state == {"next_index": 20}
    assert restored.ledger == {"rollbacks": [{"from": 15, "to": 10}], "skipped": [[100, 300]]}
    worker.check_restored(restored.train_state)


def test_restore_onto_a_different_mesh_reshards(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save(10, worker.sharded_state(jax.make_mesh(*worker.SAVE_MESH), 2), {}, {})
    restore_mesh = jax.make_mesh(*worker.RESTORE_MESH)
    restored = checkpointer.restore(worker.abstract_state(restore_mesh))
    checkpointer.close()
    kernel = restored.train_state["opt"]["mu_kernel"]
    assert kernel.sharding.mesh.axis_names == ("data", "model")
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("data", "model")
    worker.check_restored(restored.train_state)


def test_async_save_returns_before_the_commit_and_no_longer_needs_the_device_arrays(
    tmp_path, monkeypatch
):
    commit_allowed = threading.Event()
    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_when_allowed(self):
        import asyncio

        await asyncio.to_thread(commit_allowed.wait)
        return await original_finalize(self)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize_when_allowed)
    checkpointer = _checkpointer(tmp_path)
    state = {"w": jnp.arange(64.0).reshape(8, 8), "step": jnp.int32(10)}
    expected = jax.tree.map(np.asarray, state)

    checkpointer.save(10, state, {"next_index": 80}, {})
    # As soon as save returns, the training step may donate these buffers (the save holds
    # a device copy; Orbax copies that to host memory on the background thread).
    jax.tree.map(lambda x: x.delete(), state)
    assert checkpointer.steps() == [10]  # handed to Orbax, not committed: a tmp directory
    assert [(i.step, i.complete) for i in list_checkpoints(tmp_path)] == [(10, False)]
    assert float(jax.jit(lambda x: (x @ x).sum())(jnp.ones((16, 16)))) == 16 * 16 * 16

    commit_allowed.set()
    checkpointer.wait_until_finished()
    assert [(i.step, i.complete, i.has_manifest) for i in list_checkpoints(tmp_path)] == [
        (10, True, True)
    ]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
    restored = checkpointer.restore(abstract)
    checkpointer.close()
    jax.tree.map(
        np.testing.assert_array_equal, jax.tree.map(np.asarray, restored.train_state), expected
    )


def test_steps_that_donate_the_state_after_an_async_save_do_not_change_what_was_saved(
    tmp_path,
):
    checkpointer = _checkpointer(tmp_path, every_steps=1, keep_last=5)
    mesh = jax.make_mesh(*worker.SAVE_MESH)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("pod", "data")))
    state = {"w": jax.device_put(jnp.ones(1024), sharding)}
    double = jax.jit(lambda s: jax.tree.map(lambda x: 2.0 * x, s), donate_argnums=0)
    for step in range(1, 5):
        checkpointer.save(step, state, {}, {})
        state = double(state)  # reuses the buffers while the save is still writing
    abstract = {"w": jax.ShapeDtypeStruct((1024,), jnp.float32, sharding=sharding)}
    saved = {
        s: np.asarray(checkpointer.restore(abstract, step=s).train_state["w"]) for s in range(1, 5)
    }
    checkpointer.close()
    for step, w in saved.items():
        np.testing.assert_array_equal(w, np.full(1024, 2.0 ** (step - 1)))


def test_rollback_restore_then_discard_after_removes_the_abandoned_trajectory(tmp_path):
    checkpointer = _checkpointer(tmp_path, keep_last=5)
    for step in (10, 20, 30):
        checkpointer.save(step, {"w": jnp.full(4, step, jnp.float32)}, {"at": step}, {})
    target = 10  # a spike at 35 rolling back 20 steps (supervise/rollback.py picks it)
    restored = checkpointer.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)}, step=target)
    assert (restored.step, restored.data_state) == (10, {"at": 10})
    assert checkpointer.discard_after(target) == [20, 30]
    assert checkpointer.steps() == [10]
    checkpointer.close()


def test_saving_an_older_step_replaces_the_abandoned_newer_checkpoints(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save(10, {"w": jnp.zeros(4)}, {"pass": 1}, {})
    checkpointer.save(20, {"w": jnp.zeros(4)}, {"pass": 1}, {})
    checkpointer.save(10, {"w": jnp.ones(4)}, {"pass": 2}, {"rollbacks": [[15, 10]]})
    restored = checkpointer.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert checkpointer.steps() == [10]
    checkpointer.close()
    assert restored.data_state == {"pass": 2}
    np.testing.assert_array_equal(np.asarray(restored.train_state["w"]), np.ones(4))


def test_empty_directory_raises_checkpoint_not_found_naming_it(tmp_path):
    checkpointer = _checkpointer(tmp_path / "run")
    with pytest.raises(CheckpointNotFound, match=str(tmp_path / "run")):
        checkpointer.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    checkpointer.close()


def test_missing_step_raises_checkpoint_not_found_listing_the_steps(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save(10, {"w": jnp.zeros(4)}, {}, {})
    with pytest.raises(CheckpointNotFound, match=r"step 20; complete steps: \[10\]"):
        checkpointer.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)}, step=20)
    checkpointer.close()


def test_gs_directory_is_passed_on_unmangled():
    path = checkpoint_path("gs://palm-bucket/runs/540b")
    assert str(path) == "gs://palm-bucket/runs/540b"
    assert str(path / "100" / "state") == "gs://palm-bucket/runs/540b/100/state"
