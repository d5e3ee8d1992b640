"""Text in, text out: tokenize prompts, decode with the model's KV cache, batched, to EOS.

Prompts of the same token length decode together in one batch: the model's cache writes
every row at one position, so rows of different lengths would need padding that the
attention would see. Each prompt starts with EOS, the document separator the model saw in
training before every document.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import jax
import numpy as np

from palm.config import ModelConfig
from palm.decode import generate
from palm_platform.eval.restore import EvalInputError


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter
    seed: int = 0


def kv_cache_bytes(config: ModelConfig, batch: int, length: int, itemsize: int = 4) -> int:
    """Bytes of the decode cache: one key and one value head per layer (multi-query)."""
    return 2 * config.num_layers * batch * length * config.head_dim * itemsize


def encode_prompts(tokenizer, prompts: list[str], max_len: int, max_new_tokens: int) -> list[list[int]]:
    """EOS + tokens of each prompt; a one-line error for an empty or too long prompt."""
    out = []
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise EvalInputError(f"prompt {i + 1} is empty. Fix: give some text to continue")
        ids = [tokenizer.eos_id, *tokenizer.encode(prompt)]
        if len(ids) + max_new_tokens > max_len:
            raise EvalInputError(
                f"prompt {i + 1} has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} that "
                f"exceeds the model's context of {max_len}. Fix: shorten it or lower --max-new-tokens")
        out.append(ids)
    return out


def generate_ids(params, config: ModelConfig, prompts_ids: list[list[int]], sampling: Sampling,
                 eos_id: int) -> list[list[int]]:
    """New token ids per prompt (EOS and what follows cut off), in the prompts' order."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(prompts_ids):
        by_length[len(ids)].append(i)
    out: list[list[int]] = [[] for _ in prompts_ids]
    for length, rows in sorted(by_length.items()):
        prompt_BxP = np.asarray([prompts_ids[i] for i in rows], np.int32)
        # One key per batch from the seed and the prompt length: the same prompts and seed
        # give the same text whatever else is in the file.
        rng = jax.random.fold_in(jax.random.key(sampling.seed), length)
        tokens_BxT = generate(params, prompt_BxP, rng, config=config,
                              max_new_tokens=sampling.max_new_tokens,
                              temperature=sampling.temperature, top_k=sampling.top_k,
                              top_p=sampling.top_p, eos_id=eos_id)
        for row, i in enumerate(rows):
            new = np.asarray(tokens_BxT[row, length:]).tolist()
            out[i] = new[: new.index(eos_id)] if eos_id in new else new
    return out
