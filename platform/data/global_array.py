"""Turn each process's local batch into one global batch `jax.Array` on the mesh."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding

from palm_platform.mesh import batch_sharding  # noqa: F401  (re-exported for data users)


def to_global_array(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """One global array from every process's equal-sized local batch, in process order.

    The local rows must be the rows of the devices this process owns, which holds when
    the mesh places each process's devices on a contiguous block of the batch axes (as
    `jax.make_mesh` / `mesh_utils.create_device_mesh` do for TPU hosts).
    """
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, global_shape)
