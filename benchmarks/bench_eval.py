"""Generation and evaluation speed of `palm-100m` on this CPU, one device.

    JAX_PLATFORMS=cpu python benchmarks/bench_eval.py [--prompt 32] [--new 32] [--batch 2] \
        [--seq 256]

Measures, in one run (random parameters: speed does not depend on training):
- decode tokens/s with the multi-query KV cache (`palm.decode.generate`) vs without it
  (`generate_uncached`, which recomputes the whole prefix for every new token), greedy,
  --batch prompts of --prompt tokens, --new new tokens; each compiled and warmed up first,
  then timed best of --rounds;
- KV-cache bytes per token: one K/V head per layer (multi-query) vs a multi-head model of the
  same width (H heads of keys and values), float32 cache, for palm-100m and the paper's sizes;
- eval throughput: the harness's loglikelihood score step (`make_score_step`) tokens/s vs the
  train step's forward pass (cross-entropy + z-loss, no gradient) on the same [batch, seq].
The machine is shared: read the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

from palm.config import PRESETS  # noqa: E402
from palm.decode import generate, generate_uncached  # noqa: E402
from palm.model import PaLM, cross_entropy_and_z_loss  # noqa: E402
from palm_platform.eval.generate import kv_cache_bytes  # noqa: E402
from palm_platform.train.eval_step import make_score_step  # noqa: E402


def best_seconds(fn, rounds: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cfg = PRESETS["palm-100m"]
    params = nn.meta.unbox(
        PaLM(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    )
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"palm-100m: {n_params / 1e6:.0f}M parameters, compute {cfg.compute_dtype}, "
          f"{jax.devices()[0].platform} x1")

    prompt = jax.random.randint(jax.random.key(1), (args.batch, args.prompt), 3, cfg.vocab_size)
    kw = {"config": cfg, "max_new_tokens": args.new}
    cached_s = best_seconds(lambda: generate(params, prompt, jax.random.key(0), **kw), args.rounds)
    uncached_s = best_seconds(lambda: generate_uncached(params, prompt, jax.random.key(0), **kw),
                              args.rounds)
    new_tokens = args.batch * args.new
    print(
        f"decode {args.batch} x ({args.prompt} prompt + {args.new} new): KV cache "
        f"{new_tokens / cached_s:.0f} tokens/s, recomputing the prefix "
        f"{new_tokens / uncached_s:.0f} tokens/s -> cache {uncached_s / cached_s:.1f}x faster"
    )

    for name in ("palm-100m", "palm-8b", "palm-62b", "palm-540b"):
        c = PRESETS[name]
        mqa = kv_cache_bytes(c, 1, 1)
        mha = mqa * c.num_heads
        print(
            f"KV cache per token {name}: multi-query {mqa / 1024:.1f} KiB, multi-head of the same "
            f"width {mha / 1024:.1f} KiB ({c.num_heads}x); 2048-token context "
            f"{2048 * mqa / 2**20:.0f} MiB vs {2048 * mha / 2**20:.0f} MiB"
        )

    tokens_BxL1 = jax.random.randint(
        jax.random.key(2), (args.batch, args.seq + 1), 3, cfg.vocab_size
    )
    mask_BxL = jnp.ones((args.batch, args.seq), jnp.float32)
    score = make_score_step(cfg)
    model = PaLM(cfg)

    @jax.jit
    def train_forward(params, tokens_BxL1):
        logits, _ = model.apply({"params": params}, tokens_BxL1[:, :-1])
        ce, z = cross_entropy_and_z_loss(logits, tokens_BxL1[:, 1:], cfg.z_loss)
        return ce + z

    score_s = best_seconds(lambda: score(params, tokens_BxL1, mask_BxL), args.rounds)
    forward_s = best_seconds(lambda: train_forward(params, tokens_BxL1), args.rounds)
    tokens = args.batch * args.seq
    print(
        f"eval loglikelihood {tokens / score_s:.0f} tokens/s vs train forward "
        f"{tokens / forward_s:.0f} tokens/s on [{args.batch}, {args.seq}] -> ratio "
        f"{forward_s / score_s:.2f}"
    )


if __name__ == "__main__":
    main()
