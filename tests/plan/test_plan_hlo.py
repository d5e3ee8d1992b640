"""plan/hlo.py: FLOPs and collectives read from compiled HLO, every loop body counted as it runs.

CPU only (no libtpu): small jitted functions whose FLOPs and bytes are known by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from palm_platform.plan.flops import jaxpr_matmul_flops
from palm_platform.plan.hlo import HloParseError, analyze, summary

PEAK, HBM = 1e12, 1e11


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def xla_flops(c) -> float:
    cost = c.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_a_fori_loop_body_is_counted_trip_count_times():
    x, w = jnp.ones((64, 32)), jnp.ones((32, 32))

    def f(x, w):  # each iteration's matmul depends on the last (XLA hoists invariant ones)
        return jax.lax.fori_loop(0, 7, lambda i, acc: jnp.tanh(acc @ w), x)

    c = compiled(f, x, w)
    matmul = 2 * 64 * 32 * 32
    cost = analyze(c.as_text(), PEAK, HBM)
    assert cost.flops == 7 * matmul
    assert [n for _, n in cost.loops] == [7]
    assert xla_flops(c) < 2 * matmul  # what this module exists for: XLA counts the body once


def test_nested_loops_multiply_their_trip_counts():
    x, w = jnp.ones((16, 16)), jnp.ones((16, 16))

    def f(x, w):
        def outer(carry, _):
            inner = jax.lax.fori_loop(0, 5, lambda i, acc: jnp.tanh(acc @ w), carry)
            return inner, None

        return jax.lax.scan(outer, x, None, length=3)[0]

    cost = analyze(compiled(f, x, w).as_text(), PEAK, HBM)
    assert cost.flops == 3 * 5 * 2 * 16**3
    assert sorted(n for _, n in cost.loops) == [3, 5]


def test_convolution_flops_skip_padding_and_dilation_holes_like_xla():
    # TPU programs write batched matmuls as convolutions over dilated, padded inputs: taps
    # on holes multiply zeros. On a loop-free program XLA's own count must agree.
    x = jnp.ones((2, 8, 20, 3))  # NHWC
    k = jnp.ones((3, 3, 3, 4))  # HWIO

    def f(x, k):
        return jax.lax.conv_general_dilated(
            x, k, window_strides=(1, 2), padding=((2, 1), (1, 1)), lhs_dilation=(2, 1),
            rhs_dilation=(1, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    c = compiled(f, x, k)
    assert analyze(c.as_text(), PEAK, HBM).flops == pytest.approx(xla_flops(c), rel=1e-6)


def test_collectives_bytes_per_chip_by_kind_and_network():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("pod", "data"))
    rows = NamedSharding(mesh, PartitionSpec(("pod", "data")))
    x = jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=rows)

    def total(x):  # a sum over rows on every device: all-reduce over both pods
        return jax.lax.with_sharding_constraint(x.sum(0), NamedSharding(mesh, PartitionSpec()))

    def per_pod(x):  # each pod gathers its own rows: all-gather inside a pod
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec("pod")))

    shard = 1024 * 4  # bytes of one device's input
    reduced = summary(analyze(compiled(total, x).as_text(), PEAK, HBM, pods=2, devices_per_pod=4))
    assert reduced == {
        "dcn/all-reduce": {"bytes": 2 * 7 / 8 * shard, "count": 1, "overlapped_bytes": 0.0}
    }
    gathered = summary(
        analyze(compiled(per_pod, x).as_text(), PEAK, HBM, pods=2, devices_per_pod=4)
    )
    assert gathered == {"ici/all-gather": {"bytes": 3 * shard, "count": 1, "overlapped_bytes": 0.0}}


def test_a_loop_of_unknown_length_is_an_error_naming_it():
    def f(x):
        return jax.lax.while_loop(lambda v: v.sum() < 100.0, lambda v: v @ v + 1.0, x)

    with pytest.raises(HloParseError, match="trip count unknown"):
        analyze(compiled(f, jnp.ones((4, 4))).as_text(), PEAK, HBM)


def test_hbm_traffic_counts_a_slice_of_a_stacked_buffer_not_the_whole_buffer():
    stacked = jnp.ones((10, 256, 256))  # ten layers' weights, one read per iteration

    def f(stacked, x):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, stacked)[0]

    cost = analyze(compiled(f, stacked, jnp.ones((8, 256))).as_text(), PEAK, HBM)
    whole = stacked.size * 4
    # Each iteration copies its layer's slice out and the matmul reads it: about 2 reads of
    # the buffer in all. Counting the whole operand per iteration would give over 10x.
    assert whole < cost.hbm_bytes < 4 * whole


def test_jaxpr_matmul_flops_multiply_scans_by_their_length():
    def f(x, w):
        return jax.lax.scan(lambda h, _: (h @ w, None), x, None, length=4)[0]

    flops = jaxpr_matmul_flops(jax.make_jaxpr(f)(jnp.ones((8, 16)), jnp.ones((16, 16))))
    assert flops == 4 * 2 * 8 * 16 * 16


def test_a_plan_never_reports_mfu_above_100_percent_and_warns_with_the_numbers():
    from palm_platform.plan.report import PlanReport, add_step_analysis

    x, w = jnp.ones((64, 32)), jnp.ones((32, 32))
    c = compiled(lambda x, w: jax.lax.fori_loop(0, 7, lambda i, acc: jnp.tanh(acc @ w), x), x, w)
    flops = 7 * 2 * 64 * 32 * 32
    report = PlanReport(
        job="short", topology="1 x v4:1x1x1", devices=1, mesh={}, global_batch=2, microbatches=1,
        seq_len=8, params=1, argument_bytes=0, temp_bytes=0, output_bytes=0, alias_bytes=0,
        per_chip_bytes=0, hbm_bytes=1, fits=True, compiled_flops_per_step=float("nan"),
        formula_flops_per_step=2.0 * flops,  # a formula the program cannot reach
        predicted_step_s=float("nan"), predicted_mfu=float("nan"), cross_pod_bytes_per_step=0,
        compile_s=0.0)
    add_step_analysis(report, c.as_text(), program_flops=1.5 * flops, cost_analysis_flops=0.0,
                      pods=1, paper={"mfu": 0.462, "tokens_per_s": 1.0})
    assert report.compiled_flops_per_step == flops
    assert 0 < max(report.mfu_range.values()) <= 1.0
    assert any("below the formula" in line for line in report.warnings)
    mismatch = next(line for line in report.warnings if "the program's" in line)
    assert "0.667x" in mismatch  # compiled / program, with the numbers
    text = report.text()
    assert "WARNING" in text and "paper (measured): MFU 46.2%" in text


# How the TPU compiler writes a reduce-scatter (from palm plan --save-hlo of palm540b): a
# fusion whose all-reduce is sliced to the chip's shard. Trimmed to what the reader uses.
TPU_REDUCE_SCATTER = """HloModule step, num_partitions=8

%add (a: bf16[], b: bf16[]) -> bf16[] {
  %a = bf16[] parameter(0)
  %b = bf16[] parameter(1)
  ROOT %sum = bf16[] add(%a, %b)
}

%all-reduce-scatter (input: bf16[64,32]) -> bf16[16,32] {
  %input = bf16[64,32]{1,0} parameter(0)
  %all-reduce.1 = bf16[64,32]{1,0} all-reduce(%input), replica_groups=[2,4]<=[8], to_apply=%add
  %partition-id = u32[] partition-id()
  %offset = u32[] constant(16)
  %start = u32[] multiply(%partition-id, %offset)
  %zero = u32[] constant(0)
  ROOT %dynamic-slice = bf16[16,32]{1,0} dynamic-slice(%all-reduce.1, %start, %zero)
}

ENTRY %main (p: bf16[64,32]) -> bf16[16,32] {
  %p = bf16[64,32]{1,0} parameter(0)
  ROOT %fusion = bf16[16,32]{1,0} fusion(%p), kind=kCustom, calls=%all-reduce-scatter
}
"""


def test_a_tpu_reduce_scatter_fusion_is_counted_as_a_synchronous_reduce_scatter():
    cost = analyze(TPU_REDUCE_SCATTER, PEAK, HBM, pods=2, devices_per_pod=4)
    shard_in = 64 * 32 * 2  # bytes of the gradient each chip reduces
    assert summary(cost) == {"ici/reduce-scatter": {"bytes": 3 / 4 * shard_in, "count": 1,
                                                    "overlapped_bytes": 0.0}}
    assert cost.hbm_bytes == 0  # timed on the network, not as HBM traffic
