"""A step-time range for a compiled TPU v4 program, from its per-chip FLOPs, bytes and collectives.

    best  = max(compute, ICI, DCN)       every collective overlapped, all 6 ICI links busy
    worst = compute + ICI + DCN          nothing overlapped, a collective on one torus axis
    as scheduled = compute + collectives the compiler did not overlap (sync, or async with no
                   compute between start and done), at the best-case bandwidths (and at
                   least the busiest channel's time)
where compute = sum over instructions of max(FLOPs at peak, HBM bytes at HBM bandwidth).
"""

from __future__ import annotations

from dataclasses import dataclass

from palm_platform.plan.hlo import StepCost


def format_seconds(s: float) -> str:
    """A duration as the plan prints it: s, ms or us with two or three figures."""
    if s == 0:
        return "0 s"
    return f"{s:.2f} s" if s >= 0.1 else f"{s * 1e3:.2f} ms" if s >= 1e-4 else f"{s * 1e6:.1f} us"

# TPU v4 figures, per chip. Sources:
V4_PEAK_BF16_FLOPS = 275e12  # Cloud TPU v4 docs (cloud.google.com/tpu/docs/v4): 275 TFLOP/s bf16
V4_HBM_BYTES = 32 * 2**30  # same page: 32 GiB HBM2
V4_HBM_BANDWIDTH = 1200e9  # same page: HBM2 bandwidth 1200 GB/s
# ICI: 6 links per chip (3D torus), 45 GB/s per link per direction ("How to Scale Your
# Model", jax-ml.github.io/scaling-book, TPU v4p table). 6 x 45 GB/s = 270 GB/s matches the
# docs' "all-reduce bandwidth per pod 1.1 PB/s" over 4096 chips.
V4_ICI_LINK_BANDWIDTH = 45e9
V4_ICI_ALL_LINKS = 6 * V4_ICI_LINK_BANDWIDTH  # best case: a collective spread over every link
V4_ICI_ONE_AXIS = 2 * V4_ICI_LINK_BANDWIDTH  # worst case: a ring on one torus axis, both ways
# DCN: PaLM (arXiv 2204.02311, section 4) measured 81 Tbps aggregate bursts for the cross-pod
# gradient exchange of 6144 chips: 81e12 / 8 / 6144 = 1.65 GB/s per chip.
V4_DCN_PER_CHIP = 81e12 / 8 / 6144

HARDWARE = {
    "peak_bf16_flops": V4_PEAK_BF16_FLOPS,
    "hbm_bandwidth": V4_HBM_BANDWIDTH,
    "ici_all_links": V4_ICI_ALL_LINKS,
    "ici_one_axis": V4_ICI_ONE_AXIS,
    "dcn_per_chip": V4_DCN_PER_CHIP,
}


@dataclass
class StepTime:
    compute_at_peak_s: float  # matmul FLOPs at peak only
    hbm_s: float  # HBM bytes at HBM bandwidth only
    compute_s: float  # per-instruction roofline: max(FLOPs, bytes) summed
    ici_s: float  # ICI collectives at all-links bandwidth
    dcn_s: float
    exposed_s: float  # collectives the schedule does not overlap, at best-case bandwidths
    best_s: float
    scheduled_s: float
    worst_s: float


def step_time(cost: StepCost) -> StepTime:
    ici = cost.comm_bytes("ici")
    dcn = cost.comm_bytes("dcn")
    exposed = sum(c.bytes_per_chip * c.multiplier
                  / (V4_ICI_ALL_LINKS if c.network == "ici" else V4_DCN_PER_CHIP)
                  for c in cost.collectives if not c.overlapped)
    ici_s, dcn_s = ici / V4_ICI_ALL_LINKS, dcn / V4_DCN_PER_CHIP
    return StepTime(
        compute_at_peak_s=cost.flops / V4_PEAK_BF16_FLOPS,
        hbm_s=cost.hbm_bytes / V4_HBM_BANDWIDTH,
        compute_s=cost.roofline_s,
        ici_s=ici_s,
        dcn_s=dcn_s,
        exposed_s=exposed,
        best_s=max(cost.roofline_s, ici_s, dcn_s),
        # Overlapped transfers still take their time: never faster than the busiest channel.
        scheduled_s=max(cost.roofline_s + exposed, ici_s, dcn_s),
        worst_s=cost.roofline_s + ici / V4_ICI_ONE_AXIS + dcn_s,
    )


def dominant(time: StepTime) -> str:
    """What most of the worst case's time beyond pure compute-at-peak goes to."""
    parts = {
        "HBM-bound instructions": time.compute_s - time.compute_at_peak_s,
        "ICI collectives": time.worst_s - time.compute_s - time.dcn_s,
        "cross-pod (DCN) transfers": time.dcn_s,
    }
    name = max(parts, key=parts.get)
    share = parts[name] / max(time.worst_s - time.compute_at_peak_s, 1e-12)
    return f"{name} ({share:.0%} of the time above matmuls at peak)"
