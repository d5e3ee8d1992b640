"""plan/hlo.py on programs compiled by the real TPU compiler for small TPU v4 topologies.

Small functions whose FLOPs and collective bytes are known by hand, compiled here (libtpu,
no TPU needed, a few seconds each): a 12-way model axis that makes the compiler write a
windowed-einsum loop, and two v4 slices whose cross-pod traffic goes over the data-center
network.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from palm_platform.plan.hlo import analyze, summary
from palm_platform.plan.step_time import V4_HBM_BANDWIDTH, V4_PEAK_BF16_FLOPS

if importlib.util.find_spec("libtpu") is None:
    if os.environ.get("CI"):  # CI must run these: a missing extra is a broken set-up, not a skip
        pytest.fail("libtpu is missing (CI is set): install the tpu extra, pip install -e '.[tpu]'",
                    pytrace=False)
    pytest.skip("needs the tpu extra (libtpu)", allow_module_level=True)


def v4_mesh(topology: str, pods: int, shape: tuple, axes: tuple) -> Mesh:
    from palm_platform.plan.report import tpu_devices

    return Mesh(np.array(tpu_devices(topology, pods)).reshape(shape), axes)


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_windowed_einsum_loop_on_a_12_way_model_axis_is_counted_in_full():
    mesh = v4_mesh("2x2x3", 1, (1, 12), ("data", "model"))
    B, D, F = 96, 1536, 6144  # an MLP: [B, D] @ [D, F] then [B, F] @ [F, D], F split 12 ways

    def sharded(shape, spec):
        return jax.ShapeDtypeStruct(
            shape, jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec(*spec))
        )

    def mlp(x, w_in, w_out):
        h = jax.lax.with_sharding_constraint(
            jax.nn.relu(x @ w_in), NamedSharding(mesh, PartitionSpec(None, "model"))
        )
        # The output reduce-scattered over `model`: the compiler makes it a collective matmul.
        return jax.lax.with_sharding_constraint(
            h @ w_out, NamedSharding(mesh, PartitionSpec(None, "model"))
        )

    compiled = jax.jit(mlp).lower(sharded((B, D), (None, None)), sharded((D, F), (None, "model")),
                                  sharded((F, D), ("model", None))).compile()
    cost = analyze(compiled.as_text(), V4_PEAK_BF16_FLOPS, V4_HBM_BANDWIDTH)
    per_chip = 2 * (2 * B * D * F) / 12
    assert any(trips > 1 for _, trips in cost.loops), "expected a windowed-einsum loop"
    assert cost.flops == per_chip
    assert xla_flops(compiled) < 0.9 * per_chip  # XLA's cost analysis counts the loop body once
    # The reduce-scatter became a ring of collective-permutes, mostly overlapped with the
    # matmul chunks: at least a ring reduce-scatter's bytes, (n-1)/n of the [B, D] output.
    permutes = summary(cost)["ici/collective-permute"]
    ring = 11 / 12 * B * D * 2
    assert ring <= permutes["bytes"] <= 1.25 * ring
    assert permutes["overlapped_bytes"] > 0.5 * permutes["bytes"]


def test_two_v4_slices_cross_pod_traffic_is_dcn_and_in_pod_traffic_is_ici():
    mesh = v4_mesh("2x2x1", 2, (2, 4), ("pod", "data"))
    row = 8192 * 2  # one device's [1, 8192] bfloat16 share

    def across_pods(x):  # x [2, 8192]: one row per pod, replicated inside it
        return jax.lax.with_sharding_constraint(x.sum(0), NamedSharding(mesh, PartitionSpec()))

    def inside_pods(x):  # x [8, 8192]: one row per chip; each pod gathers its own rows
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec("pod")))

    def analyzed(fn, rows, spec):
        arg = jax.ShapeDtypeStruct((rows, 8192), jnp.bfloat16, sharding=NamedSharding(mesh, spec))
        return summary(analyze(jax.jit(fn).lower(arg).compile().as_text(), V4_PEAK_BF16_FLOPS,
                               V4_HBM_BANDWIDTH, pods=2))

    # All-reduce between 2 pods: each chip sends its row once over the data-center network.
    assert analyzed(across_pods, 2, PartitionSpec("pod")) == {
        "dcn/all-reduce": {"bytes": row, "count": 1, "overlapped_bytes": 0.0}}
    # All-gather of 4 rows in a pod: each chip sends its row to the 3 others over ICI.
    assert analyzed(inside_pods, 8, PartitionSpec(("pod", "data"))) == {
        "ici/all-gather": {"bytes": 3 * row, "count": 1, "overlapped_bytes": 0.0}}
