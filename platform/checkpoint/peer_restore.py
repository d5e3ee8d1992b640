"""Restore from the RAM tier: the newest step that the hosts hold between them, the other pod
first, moved to the hosts that need it by one collective per round.

After JAX is initialised every host says, in one small allgather, which complete RAM steps
it holds and whose blocks it can supply for each (its own; on 1-pod jobs its ring
neighbour's; blocks are named by index, so a host that holds pod 0's blocks can supply pod
1's: the state is replicated over `pod`). `plan_ram_restore` then picks, the same way on
every host, the newest step for which every process has a supplier: itself (tier `local`),
else a host of another pod, else a host of its own pod (tier `peer`). A supplier may feed
several processes: the moves go in rounds, one `ppermute` each (`peer_transfer.py`), in
which every supplier sends to one process. (Issue 37: the demo's restart put every host of
a pod at another's mesh position, since Ray Train ranks the workers of a slice in no fixed
order; with host 1's RAM lost, the only copy of its blocks was needed by two processes, and
a plan limited to one receiver per supplier fell back to persistent storage.)
`Checkpoints.restore`
(checkpoints.py) compares the step with the persistent tier's newest and reads persistent
storage only when no replica holds a step at least as new; when some host held a newer
RAM step than the one restored, `why_not_ram` names the hosts that lacked its blocks, so a
restore never passes over a newer step silently.
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
HOST_NAME_BYTES = 48  # a host's identity in the table (`pod-1-w0`; longer names are cut)
NAMED_HOSTS = 3  # a note names this many hosts, then counts the rest


@dataclasses.dataclass(frozen=True)
class RamInventory:
    """What every host's RAM holds, from one allgather (`gather_inventory`).

    `holdings[q][step]`: the processes whose blocks process q can supply at `step`;
    `hosts[q]`: process q's host identity (its RAM folder's name), for the notes."""

    holdings: dict[int, dict[int, set[int]]]
    hosts: dict[int, str]


@dataclasses.dataclass(frozen=True)
class RamPlan:
    step: int
    sources: dict[int, int]  # process -> the process that supplies its blocks (itself: local)
    extras_from: int  # a process holding the step's data state and ledger

    @property
    def tier(self) -> str:
        return "peer" if any(s != p for p, s in self.sources.items()) else "local"

    def rounds(self) -> list[dict[int, int]]:
        """The moves in rounds of one collective each: in a round every supplier sends to
        one process at most (a device sends one block per `ppermute`). A supplier's k-th
        receiver (by process index) moves in round k; the same rounds on every host."""
        by_supplier: dict[int, list[int]] = {}
        for p, s in sorted(self.sources.items()):
            if s != p:
                by_supplier.setdefault(s, []).append(p)
        count = max((len(r) for r in by_supplier.values()), default=0)
        return [{r[k]: s for s, r in by_supplier.items() if k < len(r)} for k in range(count)]


def plan_ram_restore(holdings: dict[int, dict[int, set[int]]], pod_of: dict[int, int]
                     ) -> RamPlan | None:
    """`holdings[q][step]`: the processes whose blocks process q can supply at `step`.

    The newest step every process can be given, and who gives it; None when there is none.
    A process takes its own blocks where it holds them; else the holder that sends least so
    far (fewest rounds), the other pod's first (its replica holds the same blocks), then the
    lowest index. A holder may feed several processes: after a restart Ray Train may rank a
    pod's hosts in another order (it sorts workers by slice name only), and then every host
    sits where another one was, so one surviving copy can be what two processes need.
    Deterministic (every host computes the same plan from the same allgathered table).
    """
    processes = sorted(pod_of)
    steps = sorted({s for held in holdings.values() for s in held}, reverse=True)
    for step in steps:
        can = {q: holdings.get(q, {}).get(step, set()) for q in processes}
        sources: dict[int, int] = {}
        sends = dict.fromkeys(processes, 0)
        for p in processes:
            if p in can[p]:
                sources[p] = p
                continue
            candidates = [q for q in processes if q != p and p in can[q]]
            if not candidates:
                break
            q = min(candidates, key=lambda q: (sends[q], pod_of[q] == pod_of[p], q))
            sources[p] = q
            sends[q] += 1
        else:
            holders = [q for q in processes if can[q]]
            return RamPlan(step, sources, extras_from=min(holders))
    return None


def gather_inventory(tier: LocalTier) -> RamInventory:
    """Every host's complete RAM steps, whose blocks it can supply, and its name (one
    allgather).

    Per host: its name (48 bytes) and, per step, the step (8 bytes) and one bit per
    process, so the table stays small at pod scale (1,536 hosts x 4 steps: 1.3 MB in all)."""
    count = jax.process_count()
    needs = {p: tier.layout.keys_of_process(p) for p in range(count)}
    width = 8 + (count + 7) // 8
    table = np.zeros(HOST_NAME_BYTES + CANDIDATE_STEPS * width, np.uint8)
    name = tier.host.encode()[:HOST_NAME_BYTES]
    table[:len(name)] = np.frombuffer(name, np.uint8)
    rows = table[HOST_NAME_BYTES:].reshape(CANDIDATE_STEPS, width)  # a view: writes land
    rows[:, :8] = np.full(CANDIDATE_STEPS, -1, np.int64).view(np.uint8).reshape(-1, 8)
    for row, step in enumerate(reversed(tier.complete_steps()[-CANDIDATE_STEPS:])):
        held = tier.reader(step).keys()
        rows[row, :8] = np.array([step], np.int64).view(np.uint8)
        rows[row, 8:] = np.packbits([needs[p] <= held for p in range(count)])
    if count > 1:
        from jax.experimental import multihost_utils

        tables = np.asarray(multihost_utils.process_allgather(table))
    else:
        tables = table[None]
    holdings: dict[int, dict[int, set[int]]] = {}
    hosts: dict[int, str] = {}
    for q in range(count):
        hosts[q] = bytes(tables[q, :HOST_NAME_BYTES]).rstrip(b"\0").decode(errors="replace")
        rows = tables[q, HOST_NAME_BYTES:].reshape(CANDIDATE_STEPS, width)
        steps = rows[:, :8].copy().view(np.int64).reshape(-1)
        bits = np.unpackbits(rows[:, 8:], axis=1)[:, :count]
        holdings[q] = {int(step): set(np.flatnonzero(bits[row]).tolist())
                       for row, step in enumerate(steps) if step >= 0}
    return RamInventory(holdings, hosts)


def why_not_ram(inventory: RamInventory, pod_of: dict[int, int], restored_step: int
                ) -> tuple[int, str] | None:
    """When some host held a RAM step newer than `restored_step`: that step and one clause
    saying why it was not restored (which hosts lacked which blocks); None when no host held
    a newer one. The same on every host (it reads the allgathered table only)."""
    holdings = inventory.holdings
    newer = {s for held in holdings.values() for s in held if s > restored_step}
    if not newer:
        return None
    step = max(newer)
    processes = sorted(pod_of)
    holders = {p: [q for q in processes if p in holdings.get(q, {}).get(step, ())]
               for p in processes}
    unserved = [p for p in processes if not holders[p]]
    # Every process with a holder would have made `step` the plan's (plan_ram_restore takes
    # the newest step every process can be given): some process has none.
    return step, (f"RAM step {step} was incomplete ({_hosts(inventory, unserved)} "
                  f"{'lacks its' if len(unserved) == 1 else 'lack their'} blocks of step "
                  f"{step}; no peer holds them)")


def _hosts(inventory: RamInventory, processes: list[int]) -> str:
    """`host 1 (pod-0-w1)`, `hosts 1 (pod-0-w1), 3 (pod-1-w1)`, `... and 5 more`."""
    named = [f"{p} ({inventory.hosts[p]})" if inventory.hosts.get(p) else str(p)
             for p in processes[:NAMED_HOSTS]]
    more = len(processes) - len(named)
    text = ", ".join(named) + (f" and {more} more" if more else "")
    return ("host " if len(processes) == 1 else "hosts ") + text


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
    loaded where a host holds it, received where not (one collective per round of moves)."""
    me, mesh, layout = jax.process_index(), tier.mesh, tier.layout
    by_process = peer_transfer.devices_by_process(mesh)
    reader = tier.reader(plan.step) if plan.step in tier.complete_steps() else None

    own_leaves, received = [], 0
    for i, (_, abstract) in enumerate(layout.leaves):
        own = []
        for device in by_process[me]:
            if plan.sources[me] == me:
                block = reader.read(layout.key(i, device))
            else:
                block = _placeholder(abstract, abstract.sharding, device)
                received += block.nbytes
            own.append(jax.device_put(block, device))
        own_leaves.append(jax.make_array_from_single_device_arrays(
            abstract.shape, abstract.sharding, own))
    state = jax.tree_util.tree_unflatten(layout.treedef, own_leaves)
    for moves in plan.rounds():  # the same rounds on every host: all take part in each
        receiver = next((p for p, s in moves.items() if s == me), None)
        send_leaves = []
        for i, (_, abstract) in enumerate(layout.leaves):
            send = []
            for rank, device in enumerate(by_process[me]):
                if receiver is not None:  # my device `rank` sends what the receiver's needs
                    block = reader.read(layout.key(i, by_process[receiver][rank]))
                else:
                    block = _placeholder(abstract, abstract.sharding, device)
                send.append(jax.device_put(block, device))
            send_leaves.append(jax.make_array_from_single_device_arrays(
                abstract.shape, abstract.sharding, send))
        send_tree = jax.tree_util.tree_unflatten(layout.treedef, send_leaves)
        state = peer_transfer.transfer(state, send_tree, mesh, moves)

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
