"""Forward+backward tokens/s and MFU of `palm-100m` on this CPU, one device.

    JAX_PLATFORMS=cpu python benchmarks/bench_model.py [--batch 2] [--seq 512] [--rounds 3]

Measures, in one run: the float32 matmul peak (a jitted 2048^3 matmul, best of several;
the bfloat16 rate of the same matmul is printed for context), then jit(value_and_grad) of
cross-entropy + z-loss of `palm.config.PRESETS["palm-100m"]` (92M parameters, float32
parameters) for compute dtype float32 and bfloat16, each with remat "none" and "full".
MFU counts the appendix-B FLOPs (6N + 12·L·H·Q·T per token, `palm.flops`): recomputation
under remat "full" is NOT counted, so it shows as lower MFU. All four are compiled and
warmed up first, then timed round-robin (--rounds rounds, each also re-measuring the
peak); a row's step time is its best round, the peak the best of all rounds, and every MFU
is against the float32 peak. The machine is shared: read the ratios between rows.
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


def matmul_flops_per_s(dtype: str, n: int = 2048, repeats: int = 3) -> float:
    """Best-of-`repeats` FLOP/s of a jitted n^3 matmul: the peak MFU is measured against."""
    a_NxN = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b_NxN = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a_NxN, b_NxN).block_until_ready()  # compile (cached after the first call)
    return 2 * n**3 / min(seconds(lambda: matmul(a_NxN, b_NxN)) for _ in range(repeats))


def seconds(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def grad_step(config, batch: int, seq: int):
    """A compiled and warmed-up () -> (loss, grads): forward+backward over [batch, seq]."""
    model = PaLM(config)
    tokens_BxL1 = jax.random.randint(jax.random.key(2), (batch, seq + 1), 0, config.vocab_size)
    params = jax.jit(lambda: model.init(jax.random.key(0), tokens_BxL1[:, :-1])["params"])()

    def loss_fn(params, tokens_BxL1):
        logits_BxLxV, _ = model.apply({"params": params}, tokens_BxL1[:, :-1])
        ce, z = cross_entropy_and_z_loss(logits_BxLxV, tokens_BxL1[:, 1:], config.z_loss)
        return ce + z

    step = jax.jit(jax.value_and_grad(loss_fn))
    jax.block_until_ready(step(params, tokens_BxL1))  # compile + warm-up
    return lambda: step(params, tokens_BxL1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="palm-100m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per configuration")
    args = parser.parse_args()

    base = PRESETS[args.preset]
    tokens = args.batch * args.seq
    flops_per_token = train_flops_per_token(base, args.seq)
    print(f"devices: {jax.devices()}  (cpu cores visible: {os.cpu_count()})")
    print(f"model: {args.preset}, {base.num_params() / 1e6:.1f}M params, batch {args.batch} x "
          f"seq {args.seq} = {tokens} tokens/step, {flops_per_token / 1e6:.1f} MFLOP/token "
          f"(6N + 12LHQT, recomputation excluded)")

    configs = [(d, r) for d in ("float32", "bfloat16") for r in ("none", "full")]
    steps = {c: grad_step(dataclasses.replace(base, compute_dtype=c[0], remat=c[1]),
                          args.batch, args.seq) for c in configs}
    # Round-robin: each round times the peak and one step of every configuration, so load
    # from other users of the machine hits all rows alike and the ratios stay meaningful.
    times = {c: [] for c in configs}
    peaks, bf16_peaks = [], []
    for _ in range(args.rounds):
        peaks.append(matmul_flops_per_s("float32"))
        bf16_peaks.append(matmul_flops_per_s("bfloat16"))
        for c in configs:
            times[c].append(seconds(steps[c]))
    peak = max(peaks)
    print(f"float32 matmul peak (2048^3, best of {3 * args.rounds}): {peak / 1e9:.1f} GFLOP/s "
          f"(per round: {', '.join(f'{p / 1e9:.0f}' for p in peaks)})")
    print(f"bfloat16 matmul (same, context only): {max(bf16_peaks) / 1e9:.1f} GFLOP/s")

    rates = {}
    print(f"\n{'compute':>9} {'remat':>5} {'best s':>7} {'median s':>8} {'tokens/s':>9} {'MFU':>7}")
    for c in configs:
        best = min(times[c])
        rates[c] = tokens / best
        print(f"{c[0]:>9} {c[1]:>5} {best:7.2f} {statistics.median(times[c]):8.2f} "
              f"{rates[c]:9.0f} {mfu(rates[c], flops_per_token, peak):7.1%}")

    print("\nratios (best tokens/s):")
    for dtype in ("float32", "bfloat16"):
        print(f"  {dtype}: remat full / none = {rates[dtype, 'full'] / rates[dtype, 'none']:.2f}")
    for remat in ("none", "full"):
        print(f"  remat {remat}: bfloat16 / float32 = "
              f"{rates['bfloat16', remat] / rates['float32', remat]:.2f}")


if __name__ == "__main__":
    main()
