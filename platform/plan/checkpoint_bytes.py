"""Checkpoint bytes per host from the plan's shardings: what each tier moves per host.

A host saves each unique shard of the state it holds once (its chips may hold replicas of
the same shard): that is the RAM tier's save and a restarted host's restore. The persistent
tier writes every unique shard of the job once (Orbax writes replica 0), spread over the
hosts of one pod, the data-parallel replica that owns replica 0.
"""

from __future__ import annotations

import math
from collections import defaultdict


def _key(index: tuple, shape: tuple) -> tuple:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape, strict=True))


def checkpoint_bytes(abstract_state, devices) -> dict:
    """{"local_per_host": the largest host's unique bytes, "persistent_per_host": unique
    bytes of the job over one pod's hosts, "unique": the job's unique bytes}."""
    import jax

    per_host: dict[int, int] = defaultdict(int)
    unique = 0
    for leaf in jax.tree.leaves(abstract_state):
        shape, itemsize = tuple(leaf.shape), leaf.dtype.itemsize
        seen_global: set = set()
        seen_host: dict[int, set] = defaultdict(set)
        for device, index in leaf.sharding.devices_indices_map(shape).items():
            key = _key(index, shape)
            nbytes = math.prod(b - a for a, b in key) * itemsize
            if key not in seen_host[device.process_index]:
                seen_host[device.process_index].add(key)
                per_host[device.process_index] += nbytes
            if key not in seen_global:
                seen_global.add(key)
                unique += nbytes
    hosts = {d.process_index for d in devices}
    pods = {getattr(d, "slice_index", 0) for d in devices}
    hosts_per_pod = max(len(hosts) // max(len(pods), 1), 1)
    return {"local_per_host": max(per_host.values(), default=0),
            "persistent_per_host": unique / hosts_per_pod, "unique": unique}
