"""Data pipeline throughput per process on one CPU core, next to the train step it feeds.

    python benchmarks/bench_data.py [--job jobs/local-cpu.yaml] [--batches 200]

First pass: a fresh cache, so it includes reading and tokenising the embedded default
corpus. Steady state: a pipeline rebuilt from the warm cache (what every restart does),
then batches. Tokens are counted as the model sees them: rows x seq_len. The job's model,
seq_len and first global batch size set both sides: in the same run, after the pipeline,
the platform's own train step (one device, one microbatch, state donated) is timed on that
batch, so the ratio compares the pipeline with what the step consumes on this machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from palm_platform.data import build_pipeline  # noqa: E402
from palm_platform.job import load_job  # noqa: E402


def _batches(pipeline, global_batch_size: int, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        pipeline.local_batch(global_batch_size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="jobs/local-cpu.yaml")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    args = parser.parse_args()
    job = load_job(args.job)
    args.seq_len, args.global_batch_size = job.seq_len, job.train.batch_size_at(0)
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cores:
        os.sched_setaffinity(0, {min(cores)})  # one core, like one host CPU
    config = job.data
    tokens_per_batch = args.global_batch_size * args.seq_len
    with tempfile.TemporaryDirectory() as cache_dir:

        def build():
            return build_pipeline(
                config,
                seq_len=args.seq_len,
                base_dir=Path.cwd(),
                process_index=0,
                process_count=1,
                cache_dir=Path(cache_dir),
            )

        start = time.perf_counter()
        pipeline = build()
        build_s = time.perf_counter() - start
        corpus_tokens = sum(s["tokens"] for s in pipeline.stats()["sources"].values())
        first_batches_s = _batches(pipeline, args.global_batch_size, args.batches)
        first_pass = args.batches * tokens_per_batch / (build_s + first_batches_s)

        start = time.perf_counter()
        pipeline = build()
        load_s = time.perf_counter() - start
        steady_s = _batches(pipeline, args.global_batch_size, args.batches)
        steady = args.batches * tokens_per_batch / steady_s

    print(f"embedded corpus: {corpus_tokens:,} tokens, {pipeline.vocab_size}-piece tokenizer")
    print(f"setting: 1 core, seq_len {args.seq_len}, global batch {args.global_batch_size}, "
          f"{args.batches} batches")  # fmt: skip
    print(f"tokenise + cache (first build):     {build_s:8.2f} s = "
          f"{corpus_tokens / build_s:14,.0f} corpus tokens/s")  # fmt: skip
    print(f"first pass (build + batches):       {first_pass:14,.0f} tokens/s")
    print(f"rebuild from warm cache:            {load_s:8.2f} s")
    print(f"steady state (batches from cache):  {steady:14,.0f} tokens/s "
          f"({steady_s / args.batches * 1e3:.2f} ms per batch)")  # fmt: skip
    if cores:
        os.sched_setaffinity(0, cores)  # the step gets the cores a host's JAX process has
    train = train_tokens_per_s(job, pipeline.local_batch(args.global_batch_size), args.steps)
    print(f"train step ({job.model.preset}, 1 device) consumes: {train:,.0f} tokens/s")
    print(f"pipeline / train ratio (steady, same run): {steady / train:,.1f}x")


def train_tokens_per_s(job, batch, steps: int) -> float:
    """Best-of-`steps` tokens/s of the platform's train step on one device for `batch`."""
    import jax

    from palm_platform.mesh import make_mesh
    from palm_platform.train.optimizer import build_optimizer, learning_rate_schedule
    from palm_platform.train.state import init_train_state, state_shardings
    from palm_platform.train.step import StepSpec, make_train_step

    model, tx = job.model.build(), build_optimizer(job.optimizer)[0]
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    state = init_train_state(model, tx, mesh, seed=0)
    step = make_train_step(StepSpec(model, 1), tx, mesh, state_shardings(model, tx, mesh)[1],
                           learning_rate_schedule(job.optimizer))
    tokens = jax.device_put(batch)
    state, _ = jax.block_until_ready(step(state, tokens))  # compile
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(step(state, tokens))
        best = min(best, time.perf_counter() - start)
    return batch.shape[0] * (batch.shape[1] - 1) / best


if __name__ == "__main__":
    main()
