"""Where eval and decode inputs go, and how their outputs come back to every host.

    one process       numpy in, numpy out (jit places inputs on the first device)
    the job's mesh    numpy (the same on every host) -> a replicated global array;
                      parameters stay sharded as in training; outputs, whatever sharding
                      the compiler chose, are gathered to numpy on every host

Every host runs the same requests in the same order (SPMD), so each jitted call is one
program across the hosts; only host 0 reports.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class Placement:
    """One process (`mesh=None`) or every host of the job's mesh."""

    def __init__(self, mesh: Mesh | None = None):
        self.mesh = mesh
        self._replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

    def put(self, array: np.ndarray):
        """A host array as a jit input: itself, or replicated over the mesh."""
        if self._replicated is None:
            return array
        array = np.asarray(array)
        return jax.make_array_from_callback(
            array.shape, self._replicated, lambda index: array[index]
        )

    def get(self, tree):
        """Outputs as numpy on this host (gathered across hosts when not all local)."""
        def fetch(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                from jax.experimental import multihost_utils

                return np.asarray(multihost_utils.process_allgather(x, tiled=True))
            return np.asarray(x)

        return jax.tree.map(fetch, tree)


LOCAL = Placement()
