"""Model FLOPs utilisation: the model's FLOPs per second over the devices' peak.

The FLOPs per token come from the model (`palm.flops`); the peak is the datasheet on TPU
and a matmul measured in the same run on CPU (a CPU has no fixed datasheet figure worth
comparing against).
"""

from __future__ import annotations

import time

import jax
import numpy as np

TPU_V4_PEAK_FLOPS = 275e12


def device_peak_flops() -> float:
    """Peak FLOP/s of one device: the datasheet on TPU, a measured matmul on CPU."""
    device = jax.devices()[0]
    if device.platform == "tpu":
        return TPU_V4_PEAK_FLOPS
    n = 1024
    a = jax.device_put(np.ones((n, n), np.float32), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        out = matmul(a)
    out.block_until_ready()
    return 5 * 2 * n**3 / (time.perf_counter() - start)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """The fraction of `peak_flops` (all devices) that `tokens_per_s` trained tokens use."""
    return tokens_per_s * flops_per_token / peak_flops
