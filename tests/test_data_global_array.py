"""The local batch becomes one global array split over the ("pod", "data") mesh axes."""

import jax
import numpy as np
from jax.sharding import Mesh

from palm_platform.data import batch_sharding, to_global_array


def test_to_global_array_puts_each_batch_slice_on_its_pod_and_data_devices():
    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("pod", "data", "model"))
    local = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
    batch = to_global_array(local, batch_sharding(mesh))
    assert batch.shape == (8, 5) and batch.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(batch), local)
    for pod in range(2):
        for data in range(2):
            rows = slice((pod * 2 + data) * 2, (pod * 2 + data) * 2 + 2)
            for model in range(2):  # replicated over the model axis
                (shard,) = [
                    s for s in batch.addressable_shards if s.device == devices[pod, data, model]
                ]
                assert shard.index[0] == rows
                np.testing.assert_array_equal(np.asarray(shard.data), local[rows])
