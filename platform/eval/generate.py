"""Text in, text out: tokenize prompts, decode with the model's KV cache, batched, to EOS.

Prompts of any lengths decode together in one batch: right-padded to the longest, each
row at its own positions (palm.decode.generate's `prompt_lengths_B`), so a prompt gives the
same greedy tokens in a batch as alone. Each prompt starts with EOS, the document separator
the model saw in training before every document.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from palm.config import ModelConfig
from palm.decode import generate
from palm_platform.eval.placement import LOCAL, Placement
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


def encode_prompts(
    tokenizer, prompts: list[str], max_len: int, max_new_tokens: int
) -> list[list[int]]:
    """EOS + tokens of each prompt; a one-line error for an empty or too long prompt."""
    out = []
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise EvalInputError(f"prompt {i + 1} is empty. Fix: give some text to continue")
        ids = [tokenizer.eos_id, *tokenizer.encode(prompt)]
        if len(ids) + max_new_tokens > max_len:
            raise EvalInputError(
                f"prompt {i + 1} has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} "
                f"that exceeds the model's context of {max_len}. Fix: shorten it or lower "
                "--max-new-tokens"
            )
        out.append(ids)
    return out


def raw_key(seed: int) -> np.ndarray:
    """The seed's PRNG key as plain uint32 data, which can be placed like any input."""
    return np.asarray(jax.random.key_data(jax.random.key(seed)))


def generate_ids(params, config: ModelConfig, prompts_ids: list[list[int]], sampling: Sampling,
                 eos_id: int, placement: Placement = LOCAL) -> list[list[int]]:
    """New token ids per prompt (EOS and what follows cut off), in the prompts' order."""
    lengths_B = np.asarray([len(ids) for ids in prompts_ids], np.int32)
    prompt_BxP = np.full((len(prompts_ids), int(lengths_B.max())), max(eos_id, 0), np.int32)
    for row, ids in enumerate(prompts_ids):
        prompt_BxP[row, : len(ids)] = ids
    tokens_BxT = placement.get(generate(
        params, placement.put(prompt_BxP), placement.put(raw_key(sampling.seed)), config=config,
        max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        top_k=sampling.top_k, top_p=sampling.top_p, eos_id=eos_id,
        prompt_lengths_B=placement.put(lengths_B)))
    out = []
    for row, length in enumerate(lengths_B):
        new = tokens_BxT[row, length : length + sampling.max_new_tokens].tolist()
        out.append(new[: new.index(eos_id)] if eos_id in new else new)
    return out
