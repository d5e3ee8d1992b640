"""Autoregressive decoding with a multi-query KV cache: greedy or temperature sampling.

The cache holds one key head and one value head per layer ([N, B, T, Q]), H times smaller
than a multi-head cache: the reason PaLM chose multi-query attention.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from palm.config import ModelConfig
from palm.model import PaLM, init_cache


def _filter(logits_BxV, top_k: int, top_p: float):
    """Keep the top_k most likely tokens and the smallest set whose probability >= top_p."""
    low = jnp.finfo(logits_BxV.dtype).min
    if top_k > 0:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, low, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        # A token is kept when the mass of the tokens strictly more likely is below top_p.
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        kept = jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf).min(axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < kept, low, logits_BxV)
    return logits_BxV


def _pick(logits_BxV, rng, temperature: float, top_k: int = 0, top_p: float = 1.0):
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = _filter(logits_BxV / temperature, top_k, top_p)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("config", "max_new_tokens", "temperature", "top_k", "top_p",
                                   "eos_id"))
def generate(params, prompt_BxP, rng, *, config: ModelConfig, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int = -1,
             prompt_lengths_B=None):
    """Prompt [B, P] -> prompt + max_new_tokens tokens [B, P + max_new_tokens], cached.

    `prompt_lengths_B` (default: all P): prompts of different lengths, right-padded to P.
    Row b's new tokens then start at column `prompt_lengths_B[b]` and it decodes at its own
    positions (RoPE and the cache slot are the absolute position), so its tokens are the
    ones it gets alone: its padding sits at later positions, which the causal mask hides
    until the row overwrites them. With `eos_id` >= 0 a row that produced EOS continues with
    EOS only, and the loop stops early once every row has.
    """
    model = PaLM(config)
    B, P = prompt_BxP.shape
    total = P + max_new_tokens
    lengths_B = (
        jnp.full((B,), P, jnp.int32)
        if prompt_lengths_B is None
        else jnp.asarray(prompt_lengths_B, jnp.int32)
    )
    rows_B = jnp.arange(B)
    cache = init_cache(config, B, total)
    positions_BxP = jnp.broadcast_to(jnp.arange(P), (B, P))
    logits_BxPxV, cache = model.apply({"params": params}, prompt_BxP, positions_BxP, cache)
    rngs = jax.random.split(rng, max_new_tokens)
    first_B = _pick(logits_BxPxV[rows_B, lengths_B - 1], rngs[0], temperature, top_k, top_p)
    fill = max(eos_id, 0)
    tokens_BxT = jnp.full((B, total), fill, jnp.int32).at[:, :P].set(prompt_BxP)
    tokens_BxT = tokens_BxT.at[rows_B, lengths_B].set(first_B)
    done_B = first_B == eos_id

    def step(carry):
        i, tokens_BxT, cache, done_B = carry
        position_B = lengths_B + i - 1  # each row's newest token, whose K/V are not cached yet
        token_Bx1 = jnp.take_along_axis(tokens_BxT, position_B[:, None], axis=1)
        logits_Bx1xV, cache = model.apply({"params": params}, token_Bx1, position_B[:, None], cache)
        next_B = _pick(logits_Bx1xV[:, 0], rngs[i], temperature, top_k, top_p)
        next_B = jnp.where(done_B, fill, next_B)
        return (
            i + 1,
            tokens_BxT.at[rows_B, position_B + 1].set(next_B),
            cache,
            done_B | (next_B == eos_id),
        )

    def more(carry):
        i, _, _, done_B = carry
        return (i < max_new_tokens) & ~done_B.all()

    _, tokens_BxT, _, _ = jax.lax.while_loop(more, step, (1, tokens_BxT, cache, done_B))
    return tokens_BxT


@partial(jax.jit, static_argnames=("config", "max_new_tokens", "temperature"))
def generate_uncached(params, prompt_BxP, rng, *, config: ModelConfig, max_new_tokens: int,
                      temperature: float = 0.0):
    """Reference decoder: recomputes the whole prefix for every new token (no cache).

    Runs over a fixed [B, P + max_new_tokens] buffer; causality makes the not-yet-written
    positions invisible to the logits read at `position`.
    """
    model = PaLM(config)
    B, P = prompt_BxP.shape
    total = P + max_new_tokens
    rngs = jax.random.split(rng, max_new_tokens)
    tokens_BxT = jnp.zeros((B, total), jnp.int32).at[:, :P].set(prompt_BxP)

    def step(i, tokens_BxT):
        logits_BxTxV, _ = model.apply({"params": params}, tokens_BxT)
        position = P + i - 1
        next_B = _pick(logits_BxTxV[:, position], rngs[i], temperature)
        return tokens_BxT.at[:, position + 1].set(next_B)

    return jax.lax.fori_loop(0, max_new_tokens, step, tokens_BxT)
