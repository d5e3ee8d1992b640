"""The sharded train step on 8 fake CPU devices vs the unsharded step, same global batch.

    python benchmarks/bench_step.py [--batch 8] [--seq 256] [--rounds 5]

Sets JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=8 itself. Builds
the platform's own train step (mesh, Adafactor recipe, sharded state, donated jitted step;
one microbatch) twice for a ~19M-parameter PaLM-shaped model: on a (pod=2, data=2, model=2)
mesh over 8 devices and on a (1, 1, 1) mesh over device 0. Both are compiled and warmed up,
then timed round-robin with block_until_ready (each round also re-measures a float32 2048^3
matmul on one device); a step's time is its best round, the peak the best of all rounds.

MFU counts 6N + 12LHQT per token (no recomputation), for both layouts against the same
peak: the one-device matmul measured in the same rounds, which already uses every core of
the machine. (The 8 fake devices share those cores, so "peak x 8" would be a peak they can
never reach together; it is not printed.) The sharded/unsharded ratio measures what sharding
costs here (collectives, layout, per-device dispatch), not a speedup.
Cross-pod bytes are what each pod sends per step in the gradient exchange (ring all-reduce).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from palm.config import ModelConfig  # noqa: E402
from palm.flops import mfu, train_flops_per_token  # noqa: E402
from palm_platform.job.train import OptimizerConfig  # noqa: E402
from palm_platform.mesh import make_mesh  # noqa: E402
from palm_platform.train.optimizer import build_optimizer, learning_rate_schedule  # noqa: E402
from palm_platform.train.state import init_train_state, state_shardings  # noqa: E402
from palm_platform.train.step import StepSpec, cross_pod_bytes_per_step, make_train_step  # noqa: E402

# PaLM's shape rules at a size where one step is ~1 s on 2 cores; every sharded dimension
# (D, H, F, V) divides by the data and model degrees.
MODEL = ModelConfig(d_model=512, num_layers=4, num_heads=8, head_dim=64, vocab_size=8192,
                    max_seq_len=256, compute_dtype="float32", remat="none")


def matmul_flops_per_s(n: int = 2048, repeats: int = 3) -> float:
    """Best-of-`repeats` float32 FLOP/s of a jitted n^3 matmul on one device."""
    a_NxN = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b_NxN = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a_NxN, b_NxN).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a_NxN, b_NxN).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class Run:
    """One train step (mesh, state, jitted step) that can be stepped and timed."""

    def __init__(self, pods: int, data: int, model: int, tokens_BxL1: jax.Array):
        opt = OptimizerConfig()
        tx = build_optimizer(opt)[0]
        self.devices = pods * data * model
        self.mesh = make_mesh(pods, data, model, jax.devices()[: self.devices])
        self.state = init_train_state(MODEL, tx, self.mesh, seed=0)
        _, shardings = state_shardings(MODEL, tx, self.mesh)
        self.spec = StepSpec(MODEL, pods)
        self.step = make_train_step(self.spec, tx, self.mesh, shardings,
                                    learning_rate_schedule(opt))
        self.tokens_BxL1 = tokens_BxL1
        self.times: list[float] = []
        self.run_once()  # compile + warm-up

    def run_once(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, self.tokens_BxL1)  # state is donated
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per layout")
    args = parser.parse_args()

    tokens = args.batch * args.seq
    flops_per_token = train_flops_per_token(MODEL, args.seq)
    tokens_BxL1 = jax.random.randint(jax.random.key(1), (args.batch, args.seq + 1), 0,
                                     MODEL.vocab_size)
    print(f"devices: {len(jax.devices())} fake CPU devices on {os.cpu_count()} cores")
    print(f"model: {MODEL.num_params() / 1e6:.1f}M params (d_model {MODEL.d_model}, "
          f"{MODEL.num_layers} layers, float32, remat none), global batch {args.batch} x seq "
          f"{args.seq} = {tokens} tokens/step, {flops_per_token / 1e6:.1f} MFLOP/token")
    runs = {"unsharded (1,1,1)": Run(1, 1, 1, tokens_BxL1),
            "sharded (2,2,2)": Run(2, 2, 2, tokens_BxL1)}
    peaks = []
    for _ in range(args.rounds):  # round-robin, so machine load hits both layouts alike
        peaks.append(matmul_flops_per_s())
        for run in runs.values():
            run.times.append(run.run_once())
    peak = max(peaks)
    print(f"float32 matmul peak, one device (2048^3, best of {3 * args.rounds}): "
          f"{peak / 1e9:.1f} GFLOP/s (per round: {', '.join(f'{p / 1e9:.0f}' for p in peaks)})")

    print(f"\n{'layout':>18} {'devices':>7} {'steps/s':>8} {'tokens/s':>9} {'MFU vs machine':>14}")
    rates = {}
    for name, run in runs.items():
        steps_per_s = 1 / min(run.times)
        rates[name] = steps_per_s * tokens
        print(f"{name:>18} {run.devices:>7} {steps_per_s:8.2f} {rates[name]:9.0f} "
              f"{mfu(rates[name], flops_per_token, peak):14.1%}")
    sharded, unsharded = rates["sharded (2,2,2)"], rates["unsharded (1,1,1)"]
    print(f"\nratio sharded / unsharded (tokens/s): {sharded / unsharded:.2f}")

    params = runs["sharded (2,2,2)"].state.params
    for dtype in ("float32", "bfloat16"):
        sent = cross_pod_bytes_per_step(params, pods=2, dtype=dtype)
        print(f"cross-pod bytes per step and pod, {dtype} exchange: {sent / 1e6:.1f} MB"
              + (" (this run)" if dtype == runs["sharded (2,2,2)"].spec.cross_pod_dtype else ""))


if __name__ == "__main__":
    main()
