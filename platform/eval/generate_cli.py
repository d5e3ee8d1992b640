"""`palm generate CKPT_OR_RUN_DIR --prompt TEXT`: text from a checkpoint, on this machine.

One process on CPU (or one accelerator) suits models whose parameters fit one host
(palm-tiny .. palm-100m here; up to ~8B on a large host); bigger models need the job's mesh:
`--cluster` runs the same decode as a Ray job on the job's hosts (eval/cluster.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="CKPT_OR_RUN_DIR",
                        help="run folder or its checkpoint directory")
    parser.add_argument("--prompt", action="append", default=[],
                        help="text to continue (repeatable)")
    parser.add_argument("--prompts-file", type=Path, help="a file of prompts, one per line")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0,
                        help="sample among the k most likely (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: all)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same output")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest good one)")
    parser.add_argument("--job", type=Path,
                        help="the job file, when the run folder has no job.json")
    from palm_platform.eval.cluster import add_cluster_arguments

    add_cluster_arguments(parser)


def _check(args: argparse.Namespace) -> list[str]:
    from palm_platform.eval.restore import EvalInputError

    prompts = list(args.prompt)
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise EvalInputError(f"{args.prompts_file}: prompts file not found")
        prompts += [line for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if any(not p.strip() for p in prompts):
        raise EvalInputError("a prompt is empty. Fix: give some text to continue")
    if not prompts:
        raise EvalInputError("no prompt given (or the prompt is empty). Fix: --prompt TEXT or "
                             "--prompts-file F")
    if args.max_new_tokens < 1:
        raise EvalInputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        raise EvalInputError("--temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1 are required")
    return prompts


def complete(run, args: argparse.Namespace) -> dict:
    """{"header": what ran and the KV cache's size, "texts": prompt + continuation each}."""
    from palm_platform.eval.generate import Sampling, encode_prompts, generate_ids, kv_cache_bytes

    cfg, prompts = run.model_cfg, list(args.prompt)
    ids = encode_prompts(run.tokenizer, prompts, cfg.max_seq_len, args.max_new_tokens)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    longest = max(len(p) for p in ids) + args.max_new_tokens
    cache = kv_cache_bytes(cfg, len(ids), longest)
    header = (f"{run.job.name} step {run.step} ({run.job.model.preset}); "
              f"KV cache {cache / 2**20:.2f} MiB "
              f"for {len(ids)} prompt(s) x {longest} tokens: one K/V head, 1/{cfg.num_heads} of "
              f"multi-head's {cache * cfg.num_heads / 2**20:.2f} MiB")
    new = generate_ids(run.params, cfg, ids, sampling, run.tokenizer.eos_id, run.placement)
    texts = [p + run.tokenizer.decode(n) for p, n in zip(prompts, new, strict=True)]
    return {"header": header, "texts": texts}


def main(args: argparse.Namespace) -> int:
    from palm_platform.eval.restore import EvalInputError, restore_run

    try:
        # the workers get the prompts themselves
        args.prompt, args.prompts_file = _check(args), None
        if args.cluster:
            from palm_platform.eval.cluster import result_from_cluster

            result = result_from_cluster("generate", args, complete)[2]
        else:
            result = complete(restore_run(args.target, step=args.step, job_file=args.job), args)
    except EvalInputError as error:
        print(f"palm generate: {error}", file=sys.stderr)
        return 2
    except ConnectionError as error:
        print(f"palm generate: {error}", file=sys.stderr)
        return 2
    print(result["header"], file=sys.stderr)
    for prompt, text in zip(args.prompt, result["texts"], strict=True):
        print(f"--- {prompt}\n{text}")
    return 0
