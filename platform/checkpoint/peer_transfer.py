"""Moving whole device blocks between hosts with one collective: the RAM tier's network path.

Both moves are a `ppermute` inside a `shard_map` over every mesh axis, so each device sends
its block as it is (no arithmetic: a masked psum would turn -0.0 into +0.0, and a restored
run must stay bitwise equal to a clean one):

- the ring shift at save time (1-pod jobs): device j of host p receives device j of host
  p-1, so every host can write its neighbour's shards beside its own;
- the restore transfer: devices of a host that lost its RAM take the blocks a source host
  placed on its own devices (`sources`, one sending device per receiving device), the
  others keep what they loaded.

Devices are matched by their rank among their process's devices in mesh order, which is
the same on every host; positions are flat indices into `mesh.devices`, the linear index
`ppermute` uses over the tuple of all mesh axes.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh


def devices_by_process(mesh: Mesh) -> dict[int, list]:
    """Each process's devices in mesh order (device j of one host pairs with j of another)."""
    by_process: dict[int, list] = defaultdict(list)
    for device in mesh.devices.flat:
        by_process[device.process_index].append(device)
    return dict(sorted(by_process.items()))


def positions(mesh: Mesh) -> dict:
    return {device: i for i, device in enumerate(mesh.devices.flat)}


def ring_sources(mesh: Mesh) -> dict:
    """device -> the device of the previous process (same rank) whose block it receives."""
    by_process = devices_by_process(mesh)
    processes = list(by_process)
    return {device: by_process[processes[i - 1]][rank]
            for i, p in enumerate(processes) for rank, device in enumerate(by_process[p])}


def device_pairs(mesh: Mesh, process_sources: dict[int, int]) -> tuple[tuple[int, int], ...]:
    """(source position, destination position) for every device of every process whose
    blocks come from another process (`process_sources`: receiving -> sending process)."""
    by_process, where = devices_by_process(mesh), positions(mesh)
    return tuple((where[by_process[src][rank]], where[device])
                 for dst, src in sorted(process_sources.items()) if src != dst
                 for rank, device in enumerate(by_process[dst]))


def _specs(tree: Any) -> Any:
    return jax.tree.map(lambda a: a.sharding.spec, tree)


@functools.lru_cache(maxsize=8)
def _shift_fn(mesh: Mesh, pairs: tuple[tuple[int, int], ...], specs_def: Any):
    specs = jax.tree_util.tree_unflatten(*specs_def)

    def shift(tree):
        return jax.tree.map(lambda x: jax.lax.ppermute(x, mesh.axis_names, perm=pairs), tree)

    return jax.jit(jax.shard_map(shift, mesh=mesh, in_specs=(specs,), out_specs=specs,
                                 check_vma=False))


def _frozen_specs(tree: Any):
    leaves, treedef = jax.tree_util.tree_flatten(_specs(tree))
    return (treedef, tuple(leaves))


def compiled_ring_shift(abstract_tree: Any, mesh: Mesh):
    """Compiled for `abstract_tree` (leaves with shardings): a function that moves every
    device's block to the same-rank device of the next process (a ring).

    Compiled ahead (at set-up), so the first save does not wait for it. The result's global
    value is meaningless (its blocks sit on the wrong devices); only its addressable shards
    are read, each holding the previous host's block."""
    sources, where = ring_sources(mesh), positions(mesh)
    pairs = tuple(sorted((where[src], where[dst]) for dst, src in sources.items()))
    return _shift_fn(mesh, pairs, _frozen_specs(abstract_tree)).lower(abstract_tree).compile()


@functools.lru_cache(maxsize=8)
def _transfer_fn(mesh: Mesh, pairs: tuple[tuple[int, int], ...], specs_def: Any):
    specs = jax.tree_util.tree_unflatten(*specs_def)
    receives = np.zeros(mesh.devices.size, bool)
    receives[[dst for _, dst in pairs]] = True

    def transfer(own, send):
        position = jax.lax.axis_index(mesh.axis_names)
        take = jnp.asarray(receives)[position]
        # A select, not arithmetic: the received bits are kept exactly.
        return jax.tree.map(
            lambda o, s: jnp.where(take, jax.lax.ppermute(s, mesh.axis_names, perm=pairs), o),
            own, send)

    return jax.jit(jax.shard_map(transfer, mesh=mesh, in_specs=(specs, specs), out_specs=specs,
                                 check_vma=False))


def transfer(own: Any, send: Any, mesh: Mesh, process_sources: dict[int, int]) -> Any:
    """`own` where a process loaded its blocks itself, else what its source placed in `send`."""
    pairs = device_pairs(mesh, process_sources)
    if not pairs:
        return own
    return _transfer_fn(mesh, pairs, _frozen_specs(own))(own, send)
