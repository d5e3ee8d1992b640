"""Turn each process's local batch into one global batch `jax.Array` on the mesh.

A process holds the rows of the batch blocks its devices hold: the batch axis is cut into
one block per (pod, data) index, and a process's devices cover some of those blocks. On the
local CPU layouts and on a host whose devices span whole data indices, that is a contiguous
share, 1 / processes of the batch. On a TPU pod whose model axis spans hosts (palm540b:
12-way model parallel over hosts of 4 chips), several hosts hold the same blocks, and a
batch of 2048 over 1,536 hosts is no even split: each host reads the rows of its own
blocks, which the hosts beside it on the model axis read too.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding

from palm_platform.mesh import batch_sharding  # noqa: F401  (re-exported for data users)


@functools.lru_cache(maxsize=16)  # once per mesh, not each step's batch (to_global_array)
def process_blocks(sharding: NamedSharding) -> tuple[int, tuple[int, ...]]:
    """(blocks, mine): how many blocks the batch axis is cut into, and which of them this
    process's devices hold, in order."""
    spec = sharding.spec[0] if len(sharding.spec) else None
    names = (spec,) if isinstance(spec, str) else tuple(spec or ())
    blocks = int(np.prod([sharding.mesh.shape[name] for name in names], dtype=int))
    held = sharding.addressable_devices_indices_map((blocks, 1))
    mine = sorted({index[0].start or 0 for index in held.values()})
    return blocks, tuple(mine)


def to_global_array(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """One global array from every process's local rows: the rows of its blocks
    (`process_blocks`), in block order, as `pipeline.block_rows` names them."""
    blocks, mine = process_blocks(sharding)
    if local.shape[0] % len(mine):
        raise ValueError(f"{local.shape[0]} local rows do not split over this process's "
                         f"{len(mine)} batch blocks")
    per = local.shape[0] // len(mine)
    position = {block: i for i, block in enumerate(mine)}
    global_shape = (per * blocks, *local.shape[1:])

    def rows_of(index: tuple[slice, ...]) -> np.ndarray:
        start = index[0].start or 0
        stop = global_shape[0] if index[0].stop is None else index[0].stop
        offset = position[start // per] * per + start % per
        return local[(slice(offset, offset + stop - start), *index[1:])]

    return jax.make_array_from_callback(global_shape, sharding, rows_of)
