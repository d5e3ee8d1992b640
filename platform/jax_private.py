"""The two pieces of jax.distributed's state that JAX gives no public accessor for, read in
one place (jax 0.10; `ray/compat.py` checks the installed version against the one this was
written for).

- the coordination-service client: its `wait_at_barrier` is a gRPC barrier with a timeout,
  which a background thread may wait at beside the train step's collectives (the RAM tier's
  commit, checkpoint/local_tier.py);
- the preemption sync manager, behind `multihost_utils.reached_preemption_sync_point`: None
  when jax.distributed was started without the preemption service (supervise/preemption.py).
"""

from __future__ import annotations


def coordination_client():
    """This process's coordination-service client (None before jax.distributed.initialize)."""
    from jax._src import distributed

    return distributed.global_state.client


def preemption_sync_manager():
    """The preemption sync manager of this process's jax.distributed, or None."""
    from jax._src import distributed

    return getattr(distributed.global_state, "preemption_sync_manager", None)
