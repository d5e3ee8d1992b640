"""A JAX process for the checkpoint tests, started as a subprocess.

    python checkpoint_worker.py save    DIR STEP NUM_PROCESSES PROCESS_ID PORT
    python checkpoint_worker.py restore DIR STEP NUM_PROCESSES PROCESS_ID PORT
    python checkpoint_worker.py hang-before-commit DIR

`save` writes `expected_state()` on a (pod=2, data=2, model=2) mesh over all devices;
`restore` reads it onto (data=4, model=2) and checks every local shard against
`expected_state()`, printing RESTORED_OK. With NUM_PROCESSES > 1 the processes form one JAX
cluster on 127.0.0.1:PORT (4 CPU devices each, gloo collectives). `hang-before-commit` saves
step 1, then starts saving step 2 with Orbax's commit blocked, prints HANGING_BEFORE_COMMIT
and waits to be killed.
"""

from __future__ import annotations

import os
import sys

import numpy as np

SAVE_MESH = ((2, 2, 2), ("pod", "data", "model"))
RESTORE_MESH = ((4, 2), ("data", "model"))
# leaf -> (shape, dtype, spec on the save mesh, spec on the restore mesh)
LAYOUT = {
    "params/embed": ((64, 32), np.float32, ("model", "data"), ("model", "data")),
    "params/kernel": ((32, 128), np.float32, ("data", "model"), ("data", "model")),
    "opt/mu_kernel": ((512, 256), np.float32, (("pod", "data"), "model"), ("data", "model")),
    "step": ((), np.int32, (), ()),
    "rng": ((2,), np.uint32, (None,), (None,)),
}


def expected_state() -> dict[str, np.ndarray]:
    """The global values every test saves and checks, by flat leaf name."""
    rng = np.random.default_rng(1234)
    values = {}
    for name, (shape, dtype, _, _) in LAYOUT.items():
        if np.issubdtype(dtype, np.floating):
            values[name] = rng.standard_normal(shape).astype(dtype)
        else:
            values[name] = np.arange(np.prod(shape, dtype=int), dtype=dtype).reshape(shape) + 7
    return values


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def sharded_state(mesh, which: int) -> dict:
    """`expected_state()` as jax.Arrays on `mesh` (which: 2 = save specs, 3 = restore specs)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    values = expected_state()
    arrays = {}
    for name, layout in LAYOUT.items():
        sharding = NamedSharding(mesh, PartitionSpec(*layout[which]))
        arrays[name] = jax.make_array_from_callback(
            layout[0], sharding, lambda index, v=values[name]: v[index]
        )
    return unflatten(arrays)


def abstract_state(mesh) -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return unflatten(
        {
            name: jax.ShapeDtypeStruct(
                shape, dtype, sharding=NamedSharding(mesh, PartitionSpec(*restore_spec))
            )
            for name, (shape, dtype, _, restore_spec) in LAYOUT.items()
        }
    )


def check_restored(train_state: dict) -> None:
    """Every shard this process holds equals the saved global value at its index."""
    values = expected_state()
    for name, array in flatten(train_state).items():
        assert array.shape == values[name].shape, name
        for shard in array.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), values[name][shard.index])


def _start_jax(num_processes: int, process_id: int, port: int) -> None:
    import jax

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=60,
        )


def _config(directory: str):
    from palm_platform.checkpoint import CheckpointConfig

    return CheckpointConfig(directory=directory, every_steps=1)


def save(directory: str, step: int) -> None:
    import jax

    from palm_platform.checkpoint import Checkpointer

    mesh = jax.make_mesh(*SAVE_MESH)
    checkpointer = Checkpointer(_config(directory), directory=directory)
    checkpointer.save(step, sharded_state(mesh, 2), {"next_index": step * 8}, {"rollbacks": []})
    checkpointer.close()
    print(f"SAVED {step} process {jax.process_index()}", flush=True)


def restore(directory: str, step: int) -> None:
    import jax

    from palm_platform.checkpoint import Checkpointer

    mesh = jax.make_mesh(*RESTORE_MESH)
    checkpointer = Checkpointer(_config(directory), directory=directory)
    restored = checkpointer.restore(abstract_state(mesh))
    assert restored.step == step, restored.step
    assert restored.data_state == {"next_index": step * 8}, restored.data_state
    check_restored(restored.train_state)
    checkpointer.close()
    print(f"RESTORED_OK {step} process {jax.process_index()}", flush=True)


def hang_before_commit(directory: str) -> None:
    import asyncio
    import threading

    import jax

    from palm_platform.checkpoint import Checkpointer
    from palm_platform.compat.orbax import atomicity

    mesh = jax.make_mesh(*SAVE_MESH)
    state = sharded_state(mesh, 2)
    checkpointer = Checkpointer(_config(directory), directory=directory)
    checkpointer.save(1, state, {"next_index": 8}, {"rollbacks": []})
    checkpointer.wait_until_finished()
    never = threading.Event()

    async def finalize_never(self):  # every shard is written; the commit never comes
        print("HANGING_BEFORE_COMMIT", flush=True)
        await asyncio.to_thread(never.wait)

    # Local disks commit by renaming a tmp dir; GCS (no atomic rename) by a commit file.
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_never
    atomicity.CommitFileTemporaryPath.finalize = finalize_never
    checkpointer.save(2, state, {"next_index": 16}, {"rollbacks": []})
    never.wait()


def main(argv: list[str]) -> None:
    mode, directory = argv[0], argv[1]
    if mode == "hang-before-commit":
        return hang_before_commit(directory)
    step, num_processes, process_id, port = map(int, argv[2:6])
    _start_jax(num_processes, process_id, port)
    {"save": save, "restore": restore}[mode](directory, step)


if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    main(sys.argv[1:])
