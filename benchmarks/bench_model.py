"""Forward+backward tokens/s and MFU of `palm-100m` on this CPU, one device.

    JAX_PLATFORMS=cpu python benchmarks/bench_model.py [--batch 2] [--seq 512] [--steps 3]

Measures, in one run: the float32 matmul peak (a jitted 2048^3 matmul, best of several;
the bfloat16 rate of the same matmul is printed for context), then jit(value_and_grad) of
cross-entropy + z-loss of `palm.config.PRESETS["palm-100m"]` (92M parameters, float32
parameters) for compute dtype float32 and bfloat16, each with remat "none" and "full".
MFU counts the appendix-B FLOPs (6N + 12·L·H·Q·T per token, `palm.flops`): recomputation
under remat "full" is NOT counted, so it shows as lower MFU. Step time is the best of
--steps timed steps after a compile+warm-up step; every MFU is against the float32 peak.
The machine is shared, so read the ratios between rows, which were measured side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from palm.config import PRESETS  # noqa: E402
from palm.flops import mfu, train_flops_per_token  # noqa: E402
from palm.model import PaLM, cross_entropy_and_z_loss  # noqa: E402


def matmul_flops_per_s(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of a jitted n^3 matmul: the peak MFU is measured against."""
    a_NxN = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b_NxN = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a_NxN, b_NxN).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a_NxN, b_NxN).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_seconds(config, batch: int, seq: int, steps: int) -> tuple[float, float]:
    """(best, median) seconds of one jitted forward+backward over [batch, seq] tokens."""
    model = PaLM(config)
    tokens_BxL1 = jax.random.randint(jax.random.key(2), (batch, seq + 1), 0, config.vocab_size)
    params = jax.jit(lambda: model.init(jax.random.key(0), tokens_BxL1[:, :-1])["params"])()

    def loss_fn(params, tokens_BxL1):
        logits_BxLxV, _ = model.apply({"params": params}, tokens_BxL1[:, :-1])
        ce, z = cross_entropy_and_z_loss(logits_BxLxV, tokens_BxL1[:, 1:], config.z_loss)
        return ce + z

    grad_step = jax.jit(jax.value_and_grad(loss_fn))
    jax.block_until_ready(grad_step(params, tokens_BxL1))  # compile + warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(grad_step(params, tokens_BxL1))
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="palm-100m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    args = parser.parse_args()

    base = PRESETS[args.preset]
    tokens = args.batch * args.seq
    flops_per_token = train_flops_per_token(base, args.seq)
    print(f"devices: {jax.devices()}  (cpu cores visible: {os.cpu_count()})")
    print(f"model: {args.preset}, {base.num_params() / 1e6:.1f}M params, batch {args.batch} x "
          f"seq {args.seq} = {tokens} tokens/step, {flops_per_token / 1e6:.1f} MFLOP/token "
          f"(6N + 12LHQT, recomputation excluded)")
    peak = matmul_flops_per_s("float32")
    print(f"float32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    print(f"bfloat16 matmul (same, context only):    {matmul_flops_per_s('bfloat16') / 1e9:.1f}"
          " GFLOP/s")

    rows = {}
    print(f"\n{'compute':>9} {'remat':>5} {'best s':>7} {'median s':>8} {'tokens/s':>9} {'MFU':>7}")
    for dtype in ("float32", "bfloat16"):
        for remat in ("none", "full"):
            config = dataclasses.replace(base, compute_dtype=dtype, remat=remat)
            best, median = step_seconds(config, args.batch, args.seq, args.steps)
            rate = tokens / best
            rows[dtype, remat] = rate
            print(f"{dtype:>9} {remat:>5} {best:7.2f} {median:8.2f} {rate:9.0f} "
                  f"{mfu(rate, flops_per_token, peak):7.1%}", flush=True)

    print("\nratios (tokens/s):")
    for dtype in ("float32", "bfloat16"):
        print(f"  {dtype}: remat full / none = {rows[dtype, 'full'] / rows[dtype, 'none']:.2f}")
    for remat in ("none", "full"):
        print(f"  remat {remat}: bfloat16 / float32 = "
              f"{rows['bfloat16', remat] / rows['float32', remat]:.2f}")


if __name__ == "__main__":
    main()
