"""A tiny per-worker train function that checks the distributed set-up end to end.

Each worker reports what JAX and Ray gave it (process and device counts, MEGASCALE slice,
TPU host name) and runs two real cross-process collectives: a jitted sum over an array
sharded across every device of every process, and a `process_allgather`. Used by the Ray tests
(test_ray_cluster.py also ships it in a `ray job submit` working directory).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ray.cloudpickle

# Ray sends a function by reference (the worker imports its module), and a cluster's
# workers cannot import the test tree: this module travels by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def distributed_probe(config: dict) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import ray.train
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    from palm_platform.ray.jax_backend import bounded_jax_init_timeout_s

    num_devices = jax.device_count()
    mesh = jax.make_mesh((num_devices,), ("devices",))
    values_D = np.arange(1, num_devices + 1, dtype=np.float32)
    sharded_D = jax.make_array_from_callback(
        (num_devices,), NamedSharding(mesh, PartitionSpec("devices")), lambda idx: values_D[idx]
    )
    total = float(jax.jit(jnp.sum)(sharded_D))
    process_indices = multihost_utils.process_allgather(np.int32(jax.process_index()))
    report = {
        "world_rank": ray.train.get_context().get_world_rank(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": num_devices,
        "local_device_count": jax.local_device_count(),
        "platform": jax.devices()[0].platform,
        "jax_init_timeout_s": bounded_jax_init_timeout_s(),
        "sharded_sum": total,
        "expected_sum": num_devices * (num_devices + 1) / 2,
        "allgathered_process_indices": [int(i) for i in np.ravel(process_indices)],
        "tpu_name": os.environ.get("TPU_NAME"),
        "megascale_slice_id": os.environ.get("MEGASCALE_SLICE_ID"),
        "megascale_num_slices": os.environ.get("MEGASCALE_NUM_SLICES"),
        "megascale_coordinator_address": os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"),
    }
    if out_dir := config.get("out_dir"):
        path = Path(out_dir) / f"worker-{report['world_rank']}.json"
        path.write_text(json.dumps(report))
    ray.train.report({k: v for k, v in report.items() if not isinstance(v, list)})
