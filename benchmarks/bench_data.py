"""Data pipeline throughput per process on one CPU core: first pass and steady state.

    python benchmarks/bench_data.py [--seq-len 2048] [--global-batch-size 8]
                                    [--train-tokens-per-s X]

First pass: a fresh cache, so it includes reading and tokenising the embedded default
corpus. Steady state: a pipeline rebuilt from the warm cache (what every restart does),
then batches. Tokens are counted as the model sees them: rows x seq_len. With
--train-tokens-per-s (the train step's consumption, measured elsewhere in the same
conditions) it prints how many times faster the pipeline is than training needs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from palm_platform.data import DataConfig, build_pipeline


def _batches(pipeline, global_batch_size: int, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        pipeline.local_batch(global_batch_size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--train-tokens-per-s", type=float, default=None)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, like one host CPU
    config = DataConfig()
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
    if args.train_tokens_per_s:
        print(f"train step consumes:                {args.train_tokens_per_s:14,.0f} tokens/s")
        print(f"pipeline / train ratio (steady):    {steady / args.train_tokens_per_s:14,.1f}x")


if __name__ == "__main__":
    main()
