"""Are the pods' copies of the parameters bitwise identical? A cheap check on the mesh.

Parameters are replicated over `pod`, so each pod holds a physical copy; the cross-pod
exchange must keep them equal bit for bit. Each device sums the bit patterns of its blocks
(uint32, wrapping), the sums are added inside each pod over (data, model) and the per-pod
results all-gathered over `pod`: equal copies give equal sums on every host.
"""

from __future__ import annotations

from functools import cache

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec


def _bits(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32) if x.dtype.itemsize != 4 else x
    return jax.lax.bitcast_convert_type(x, jnp.uint32).sum(dtype=jnp.uint32)


@cache
def _checksum_fn(mesh: Mesh, treedef, specs: tuple):
    def per_pod(*leaves):
        local = sum((_bits(x) for x in leaves), jnp.uint32(0))
        in_pod = jax.lax.psum(local, ("data", "model"))
        return jax.lax.all_gather(in_pod, "pod")

    return jax.jit(jax.shard_map(per_pod, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(),
                                 check_vma=False))


def pod_checksum_array(params, mesh: Mesh) -> jax.Array:
    """The per-pod checksums, dispatched but not read: the loop reads them a step later."""
    leaves, treedef = jax.tree.flatten(params)
    specs = tuple(leaf.sharding.spec for leaf in leaves)
    return _checksum_fn(mesh, treedef, specs)(*leaves)


def checksums_agree(checksums) -> bool:
    values = [int(c) for c in jax.device_get(checksums)]
    return all(c == values[0] for c in values)
