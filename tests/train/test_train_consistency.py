"""The pods-identical check returns False when one pod's copy differs by a single bit.

The loop trusts `pod_checksum_array` + `checksums_agree` every step; these tests build parameters
whose pods hold purpose-made different copies (one bit flipped in one element of one pod's shard)
and show the check notices, for float32 and bfloat16 leaves, sharded and replicated ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from palm_platform.mesh import make_mesh
from palm_platform.train.consistency import checksums_agree, pod_checksum_array


def pod_checksums(params, mesh) -> list[int]:
    return [int(c) for c in jax.device_get(pod_checksum_array(params, mesh))]


def pods_hold_identical_params(params, mesh) -> bool:
    """What the loop computes each step with metrics.check_pods_identical."""
    return checksums_agree(pod_checksum_array(params, mesh))

# name -> (shape, dtype, partition spec over the in-pod axes)
LEAVES = {
    "kernel": ((8, 4), jnp.float32, ("data", "model")),
    "scale": ((4,), jnp.bfloat16, ("model",)),
    "bias": ((3,), jnp.float32, ()),
}


def _params(mesh, flip=None):
    """Parameters replicated over `pod`; `flip=(leaf, pod, flat index)` flips the lowest bit
    of that element in that pod's copy only (every device of the pod holding it)."""
    params = {}
    for name, (shape, dtype, spec) in LEAVES.items():
        values = np.asarray(
            jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape) * 0.37 + 1.0, dtype).copy()
        sharding = NamedSharding(mesh, PartitionSpec(*spec))
        changed = values.copy()
        if flip is not None and flip[0] == name:
            bits = changed.reshape(-1).view(np.uint16 if changed.itemsize == 2 else np.uint32)
            bits[flip[2]] ^= 1
        pod_of = {d: p for p in range(mesh.shape["pod"]) for d in mesh.devices[p].flat}
        buffers = [
            jax.device_put(
                (changed if flip is not None and pod_of[d] == flip[1] else values)[index], d
            )
            for d, index in sharding.addressable_devices_indices_map(shape).items()
        ]
        params[name] = jax.make_array_from_single_device_arrays(shape, sharding, buffers)
    return params


@pytest.fixture(scope="module")
def two_pods():
    return make_mesh(2, 2, 2, jax.devices()[:8])


def test_identical_copies_pass(two_pods):
    assert pods_hold_identical_params(_params(two_pods), two_pods)
    sums = pod_checksums(_params(two_pods), two_pods)
    assert len(sums) == 2 and sums[0] == sums[1]


@pytest.mark.parametrize("leaf", list(LEAVES))
@pytest.mark.parametrize("pod", [0, 1])
def test_one_bit_flipped_in_one_pods_copy_fails(two_pods, leaf, pod):
    last = int(np.prod(LEAVES[leaf][0])) - 1
    for index in (0, last):
        params = _params(two_pods, flip=(leaf, pod, index))
        assert not pods_hold_identical_params(params, two_pods), (leaf, pod, index)


def test_a_flip_in_any_one_of_four_pods_fails():
    # With four pods, "some pod agrees with pod 0" is not enough: every pod must agree.
    mesh = make_mesh(4, 2, 1, jax.devices()[:8])
    assert pods_hold_identical_params(_params(mesh), mesh)
    for pod in range(4):
        sums = pod_checksums(_params(mesh, flip=("kernel", pod, 5)), mesh)
        assert len(set(sums)) == 2 and sums.count(sums[pod]) == 1
        assert not pods_hold_identical_params(_params(mesh, flip=("kernel", pod, 5)), mesh)


def test_the_same_change_on_every_pod_moves_the_checksums_together(two_pods):
    # The checksum reads the values (a flip in the last shard moves it), and equal copies
    # still pass after the change.
    before = pod_checksums(_params(two_pods), two_pods)
    shape, dtype, spec = LEAVES["kernel"]
    values = np.asarray(
        jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape) * 0.37 + 1.0, dtype
    ).copy()
    values.reshape(-1).view(np.uint32)[31] ^= 1
    changed = {**_params(two_pods),
               "kernel": jax.device_put(values, NamedSharding(two_pods, PartitionSpec(*spec)))}
    after = pod_checksums(changed, two_pods)
    assert after[0] == after[1] and after != before
    assert pods_hold_identical_params(changed, two_pods)
