"""A JAX process for the RAM-tier tests, started as a subprocess (4 CPU devices each).

    python local_tier_worker.py MODE ROOT PODS NUM_PROCESSES PROCESS_ID PORT

MODE `save` saves steps 2 and 4 of `state_at(step)` into the RAM tier under ROOT and waits
for both; `tear` saves step 2, then starts step 4 with host `TEAR_HOST`'s commit blocked,
prints TEARING and waits to be killed; `restore` plans and runs the RAM restore, checks
every local shard bitwise against `state_at(step)` and prints one `RESULT {json}` line
(step, tier, bytes, why a newer RAM step was passed over: peer_restore.why_not_ram), or
`RESULT {"step": null, ...}` when no RAM step can be restored (with every host's name and
why the newest RAM step could not be). The host's folder name comes from TPU_NAME /
TPU_WORKER_ID, as on a TPU host.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from processes import print_result  # tests/support/, this script's folder, is its sys.path[0]

# leaf -> (shape, spec): parameters replicated over `pod` (data parallel across pods), an
# optimizer leaf, a scalar step
LAYOUT = {
    "params/embed": ((64, 32), ("model", "data")),
    "params/kernel": ((32, 128), ("data", "model")),
    "opt/mu": ((32, 128), ("data", "model")),
    "step": ((), ()),
}


def state_at(step: int) -> dict[str, np.ndarray]:
    """Global values for `step`, with -0.0 entries: a restore must keep their sign bit."""
    rng = np.random.default_rng(step)
    values = {}
    for name, (shape, _) in LAYOUT.items():
        if shape:
            value = rng.standard_normal(shape).astype(np.float32)
            value.reshape(-1)[::7] = -0.0
        else:
            value = np.array(step, np.int32)
        values[name] = value
    return values


def _mesh(pods: int):
    import jax

    from palm_platform.mesh import make_mesh

    return make_mesh(pods, jax.device_count() // pods // 2, 2)


def _abstract(mesh):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return {name: jax.ShapeDtypeStruct(shape, np.float32 if shape else np.int32,
                                       sharding=NamedSharding(mesh, PartitionSpec(*spec)))
            for name, (shape, spec) in LAYOUT.items()}


def _state(mesh, step: int) -> dict:
    import jax

    values = state_at(step)
    return {name: jax.make_array_from_callback(a.shape, a.sharding,
                                               lambda i, v=values[name]: v[i])
            for name, a in _abstract(mesh).items()}


def _tier(root: str, mesh, pods: int):
    from palm_platform.checkpoint.local_tier import LocalTier

    return LocalTier(root, _abstract(mesh), mesh, pods=pods)


def save(root: str, pods: int) -> None:
    mesh = _mesh(pods)
    tier = _tier(root, mesh, pods)
    for step in (2, 4):
        tier.save(step, _state(mesh, step), {"next_sequence": step * 8}, {"skips": [step]})
    tier.wait_until_finished()
    print("SAVED", tier.complete_steps(), flush=True)


def tear(root: str, pods: int) -> None:
    from palm_platform.checkpoint import local_tier

    mesh = _mesh(pods)
    tier = _tier(root, mesh, pods)
    tier.save(2, _state(mesh, 2), {"next_sequence": 16}, {"skips": [2]})
    tier.wait_until_finished()
    if tier.host == os.environ["TEAR_HOST"]:
        local_tier._commit = lambda tmp, final: time.sleep(3600)  # killed while "writing"
    tier.save(4, _state(mesh, 4), {"next_sequence": 32}, {"skips": [4]})
    print("TEARING", flush=True)
    time.sleep(3600)


def restore(root: str, pods: int) -> None:
    import jax

    from palm_platform.checkpoint.peer_restore import (
        gather_inventory,
        plan_ram_restore,
        pods_of_processes,
        restore_from_ram,
        why_not_ram,
    )

    mesh = _mesh(pods)
    tier = _tier(root, mesh, pods)
    inventory = gather_inventory(tier)
    pod_of = pods_of_processes(mesh)
    plan = plan_ram_restore(inventory.holdings, pod_of)
    if plan is None:
        print_result({"step": None, "hosts": inventory.hosts,
                      "why_not_ram": why_not_ram(inventory, pod_of, -1)})
        return
    restored = restore_from_ram(tier, plan)
    expected = state_at(plan.step)
    for name, array in restored.train_state.items():
        for shard in array.addressable_shards:
            got, want = np.asarray(shard.data), expected[name][shard.index]
            assert got.tobytes() == want.tobytes(), (name, shard.device)  # bitwise, -0.0 too
    assert restored.data_state == {"next_sequence": plan.step * 8}, restored.data_state
    assert restored.ledger == {"skips": [plan.step]}, restored.ledger
    print_result({"step": plan.step, "tier": restored.tier, "bytes_local": restored.bytes_local,
                  "bytes_peer": restored.bytes_peer, "process": jax.process_index(),
                  "why_not_ram": why_not_ram(inventory, pod_of, plan.step)})


def main() -> None:
    mode, root, pods, num_processes, process_id, port = sys.argv[1:7]
    import jax

    if int(num_processes) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=int(num_processes),
                                   process_id=int(process_id), initialization_timeout=60)
    {"save": save, "tear": tear, "restore": restore}[mode](root, int(pods))


if __name__ == "__main__":
    main()
