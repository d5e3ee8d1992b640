"""Restore from the RAM tier: the newest step that the hosts hold between them, the other pod
first, moved to the hosts that lost it by one collective.

After JAX is initialised every host says, in one small allgather, which complete RAM steps
it holds and whose blocks it can supply for each (its own; on 1-pod jobs its ring
neighbour's; blocks are named by index, so a host that holds pod 0's blocks can supply pod
1's: the state is replicated over `pod`). `plan_ram_restore` then picks, the same way on
every host, the newest step for which every process has a supplier: itself (tier `local`),
else a host of another pod, else a host of its own pod (tier `peer`). Each supplier sends to
one process at most (one `ppermute` per restore, `peer_transfer.py`). `Checkpoints.restore`
(checkpoints.py) compares the step with the persistent tier's newest and reads persistent
storage only when no replica holds a step at least as new.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax
import numpy as np

from palm_platform.checkpoint import peer_transfer
from palm_platform.checkpoint.checkpointer import Restored
from palm_platform.checkpoint.local_tier import LocalTier

log = logging.getLogger(__name__)

CANDIDATE_STEPS = 4  # newest complete steps each host reports (it keeps 2, +1 in flight)


@dataclasses.dataclass(frozen=True)
class RamPlan:
    step: int
    sources: dict[int, int]  # process -> the process that supplies its blocks (itself: local)
    extras_from: int  # a process holding the step's data state and ledger

    @property
    def tier(self) -> str:
        return "peer" if any(s != p for p, s in self.sources.items()) else "local"


def plan_ram_restore(holdings: dict[int, dict[int, set[int]]], pod_of: dict[int, int]
                     ) -> RamPlan | None:
    """`holdings[q][step]`: the processes whose blocks process q can supply at `step`.

    The newest step every process can be given, and who gives it; None when there is none.
    Deterministic (every host computes the same plan from the same allgathered table).
    """
    processes = sorted(pod_of)
    steps = sorted({s for held in holdings.values() for s in held}, reverse=True)
    for step in steps:
        can = {q: holdings.get(q, {}).get(step, set()) for q in processes}
        sources: dict[int, int] = {}
        busy: set[int] = set()
        for p in processes:
            if p in can[p]:
                sources[p] = p
                continue
            # the other pod first (its replica holds the same blocks), then this pod's ring
            candidates = sorted((q for q in processes if q != p and p in can[q] and q not in busy),
                                key=lambda q: (pod_of[q] == pod_of[p], q))
            if not candidates:
                break
            sources[p] = candidates[0]
            busy.add(candidates[0])
        else:
            holders = [q for q in processes if can[q]]
            return RamPlan(step, sources, extras_from=min(holders))
    return None


def gather_holdings(tier: LocalTier) -> dict[int, dict[int, set[int]]]:
    """Every host's complete RAM steps and whose blocks it can supply (one allgather).

    Per host and step: the step (8 bytes) and one bit per process, so the table stays small
    at pod scale (1,536 hosts x 4 steps: 1.2 MB in all)."""
    count = jax.process_count()
    needs = {p: tier.layout.keys_of_process(p) for p in range(count)}
    table = np.zeros((CANDIDATE_STEPS, 8 + (count + 7) // 8), np.uint8)
    table[:, :8] = np.full(CANDIDATE_STEPS, -1, np.int64).view(np.uint8).reshape(-1, 8)
    for row, step in enumerate(reversed(tier.complete_steps()[-CANDIDATE_STEPS:])):
        held = tier.reader(step).keys()
        table[row, :8] = np.array([step], np.int64).view(np.uint8)
        table[row, 8:] = np.packbits([needs[p] <= held for p in range(count)])
    if count > 1:
        from jax.experimental import multihost_utils

        tables = np.asarray(multihost_utils.process_allgather(table))
    else:
        tables = table[None]
    holdings: dict[int, dict[int, set[int]]] = {}
    for q in range(count):
        steps = tables[q, :, :8].copy().view(np.int64).reshape(-1)
        bits = np.unpackbits(tables[q, :, 8:], axis=1)[:, :count]
        holdings[q] = {int(step): set(np.flatnonzero(bits[row]).tolist())
                       for row, step in enumerate(steps) if step >= 0}
    return holdings


def pods_of_processes(mesh: jax.sharding.Mesh) -> dict[int, int]:
    """process -> its pod (the index along the mesh's first axis, `pod`)."""
    return {d.process_index: pod for pod in range(mesh.devices.shape[0])
            for d in mesh.devices[pod].flat}


def _broadcast_json(text: str, is_source: bool) -> str:
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8) if is_source else np.zeros(0, np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(data)), is_source=is_source))
    padded = np.zeros(max(length, 1), np.uint8)
    padded[: len(data)] = data
    out = multihost_utils.broadcast_one_to_all(padded, is_source=is_source)
    return bytes(np.asarray(out)[:length]).decode()


def restore_from_ram(tier: LocalTier, plan: RamPlan) -> Restored:
    """Build the state of `plan.step` on the tier's layout (the abstract state's shardings):
    loaded where a host holds it, received where not."""
    me, mesh, layout = jax.process_index(), tier.mesh, tier.layout
    by_process = peer_transfer.devices_by_process(mesh)
    reader = tier.reader(plan.step) if plan.step in tier.complete_steps() else None
    receivers = [p for p, s in plan.sources.items() if s == me and p != me]
    moving = plan.tier == "peer"  # the same on every host: all build `send`, or none

    own_leaves, send_leaves, received = [], [], 0
    for i, (_, abstract) in enumerate(layout.leaves):
        sharding = abstract.sharding
        own, send = [], []
        for rank, device in enumerate(by_process[me]):
            if plan.sources[me] == me:
                block = reader.read(layout.key(i, device))
            else:
                block = _placeholder(abstract, sharding, device)
                received += block.nbytes
            own.append(jax.device_put(block, device))
            if not moving:
                continue
            if receivers:  # my device `rank` sends what the receiver's device `rank` needs
                block = reader.read(layout.key(i, by_process[receivers[0]][rank]))
            else:
                block = _placeholder(abstract, sharding, device)
            send.append(jax.device_put(block, device))
        own_leaves.append(jax.make_array_from_single_device_arrays(
            abstract.shape, sharding, own))
        if moving:
            send_leaves.append(jax.make_array_from_single_device_arrays(
                abstract.shape, sharding, send))
    state = jax.tree_util.tree_unflatten(layout.treedef, own_leaves)
    if moving:
        send_tree = jax.tree_util.tree_unflatten(layout.treedef, send_leaves)
        state = peer_transfer.transfer(state, send_tree, mesh, plan.sources)

    extras_text = reader.extras_text() if me == plan.extras_from else ""
    extras = json.loads(_broadcast_json(extras_text, me == plan.extras_from))
    bytes_local = reader.bytes_read if reader is not None else 0
    totals = np.array([bytes_local, received], np.int64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        totals = np.asarray(multihost_utils.process_allgather(totals)).sum(axis=0)
    return Restored(plan.step, state, extras["data_state"], extras["ledger"], plan.tier,
                    bytes_local=int(totals[0]), bytes_peer=int(totals[1]))


def _placeholder(abstract: Any, sharding: Any, device) -> np.ndarray:
    shape = sharding.shard_shape(abstract.shape)
    return np.zeros(shape, abstract.dtype)
