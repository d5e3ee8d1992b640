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


def _pick(logits_BxV, rng, temperature: float):
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits_BxV / temperature, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("config", "max_new_tokens", "temperature"))
def generate(params, prompt_BxP, rng, *, config: ModelConfig, max_new_tokens: int,
             temperature: float = 0.0):
    """Prompt [B, P] -> prompt + max_new_tokens tokens [B, P + max_new_tokens], cached."""
    model = PaLM(config)
    B, P = prompt_BxP.shape
    total = P + max_new_tokens
    cache = init_cache(config, B, total)
    positions_BxP = jnp.broadcast_to(jnp.arange(P), (B, P))
    logits_BxPxV, cache = model.apply({"params": params}, prompt_BxP, positions_BxP, cache)
    rngs = jax.random.split(rng, max_new_tokens)
    first_B = _pick(logits_BxPxV[:, -1], rngs[0], temperature)
    tokens_BxT = jnp.zeros((B, total), jnp.int32).at[:, :P].set(prompt_BxP).at[:, P].set(first_B)

    def step(i, carry):
        tokens_BxT, cache = carry
        position = P + i - 1  # the newest token, whose K/V are not in the cache yet
        token_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxT, position, 1, axis=1)
        positions_Bx1 = jnp.full((B, 1), position)
        logits_Bx1xV, cache = model.apply({"params": params}, token_Bx1, positions_Bx1, cache)
        next_B = _pick(logits_Bx1xV[:, 0], rngs[i], temperature)
        return tokens_BxT.at[:, position + 1].set(next_B), cache

    tokens_BxT, _ = jax.lax.fori_loop(1, max_new_tokens, step, (tokens_BxT, cache))
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
