"""The local batch becomes one global array split over the ("pod", "data") mesh axes."""

import jax
import numpy as np
import pytest
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


@pytest.mark.usefixtures("libtpu")  # fails in CI without the tpu extra (tests/conftest.py)
def test_palm540b_hosts_each_hold_two_of_512_batch_blocks_each_block_on_six_hosts():
    """Why rows follow the mesh (global_array.py): on the 540B layout (abstract TPU v4
    devices of 2 x 12x16x16, as `palm plan` compiles for) a batch of 2048 over 1,536 hosts
    has no even split per host, but every host holds 2 of the 512 (pod x data) blocks."""
    from collections import defaultdict

    from palm_platform.mesh import make_mesh
    from palm_platform.plan.tpu_devices import tpu_devices

    mesh = make_mesh(2, 256, 12, tpu_devices("12x16x16", 2))
    held = defaultdict(set)
    for device, index in batch_sharding(mesh).devices_indices_map((512, 1)).items():
        held[(device.slice_index, device.process_index)].add(index[0].start)
    assert len(held) == 1536 and {len(blocks) for blocks in held.values()} == {2}
    hosts_per_block = defaultdict(int)
    for blocks in held.values():
        for block in blocks:
            hosts_per_block[block] += 1
    assert set(hosts_per_block.values()) == {6} and len(hosts_per_block) == 512
    assert 2048 % 1536 and 2048 % 512 == 0 and 512 % 512 == 0  # the job's batch ramp
