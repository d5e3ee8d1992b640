"""The PaLM decoder: parallel blocks under `scan`, shared input/output embedding, z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from palm.config import ModelConfig
from palm.layers import LayerNorm, MultiQueryAttention, SwiGLU, constrain

REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class ParallelBlock(nn.Module):
    """y = x + Attention(LN(x)) + MLP(LN(x)): one LayerNorm feeds both branches (PaLM §2)."""

    config: ModelConfig
    deterministic: bool = True  # False: apply dropout (needs a "dropout" rng)

    @nn.compact
    def __call__(self, x_BxLxD, positions_BxL, cache):
        h_BxLxD = LayerNorm(self.config, name="norm")(x_BxLxD)
        attn_BxLxD, new_cache = MultiQueryAttention(self.config, name="attention")(
            h_BxLxD, positions_BxL, cache
        )
        mlp_BxLxD = SwiGLU(self.config, name="mlp")(h_BxLxD)
        if self.config.dropout_rate > 0:  # on each branch before the residual sum (fine-tuning)
            drop = nn.Dropout(self.config.dropout_rate, deterministic=self.deterministic)
            attn_BxLxD, mlp_BxLxD = drop(attn_BxLxD), drop(mlp_BxLxD)
        y_BxLxD = x_BxLxD + attn_BxLxD.astype(x_BxLxD.dtype) + mlp_BxLxD.astype(x_BxLxD.dtype)
        return constrain(y_BxLxD, ("batch", "length", "embed")), new_cache


def _block_class(config: ModelConfig):
    # ParallelBlock's (x, positions, cache) -> (x, cache) is already nn.scan's
    # (carry, broadcast, xs) -> (carry, ys) form, so the same class serves both layouts.
    if config.remat == "none":
        return ParallelBlock
    return nn.remat(
        ParallelBlock, policy=REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers
    )


class PaLM(nn.Module):
    """Token ids [B, L] -> logits [B, L, V] (and, when decoding, the updated KV cache).

    cache: None for training; for decoding a pair of [N, B, T, Q] arrays (N layers, one K/V
    head each, T cache length) from `init_cache`.
    deterministic: True (default) never applies dropout; the train step builds the model
    with False when `config.dropout_rate > 0` and passes rngs={"dropout": key}.
    """

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, tokens_BxL, positions_BxL=None, cache=None):
        cfg = self.config
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
        embedding_VxD = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (cfg.padded_vocab_size, cfg.d_model), jnp.dtype(cfg.param_dtype),
        )
        # Embeddings ~ N(0, 1) and not rescaled: the residual stream starts at unit scale.
        if cfg.embed_lookup == "one_hot":
            one_hot_BxLxV = jax.nn.one_hot(
                tokens_BxL, cfg.padded_vocab_size, dtype=cfg.compute_dtype
            )
            one_hot_BxLxV = constrain(one_hot_BxLxV, ("batch", "length", "vocab"))
            x_BxLxD = jnp.einsum(
                "blv,vd->bld", one_hot_BxLxV, embedding_VxD.astype(cfg.compute_dtype)
            )
        else:
            x_BxLxD = jnp.take(embedding_VxD, tokens_BxL, axis=0).astype(cfg.compute_dtype)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))
        # A named point to take gradients at (only when a "perturbations" collection is
        # passed; otherwise free): how the tests check causality.
        x_BxLxD = self.perturb("embedded", x_BxLxD)
        if cfg.dropout_rate > 0:
            x_BxLxD = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)(x_BxLxD)

        block = _block_class(cfg)
        if cfg.scan_layers:
            layers = nn.scan(
                block,
                variable_axes={"params": 0},
                # each layer draws its own dropout mask (only split when there is dropout)
                split_rngs={"params": True, **({"dropout": True} if cfg.dropout_rate > 0 else {})},
                in_axes=(nn.broadcast, 0),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, deterministic=self.deterministic, name="layers")
            x_BxLxD, new_cache = layers(x_BxLxD, positions_BxL, cache)
        else:
            new_layers = []
            for i in range(cfg.num_layers):
                layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
                x_BxLxD, c = block(cfg, deterministic=self.deterministic, name=f"layer_{i}")(
                    x_BxLxD, positions_BxL, layer_cache
                )
                new_layers.append(c)
            new_cache = (
                None if cache is None else jax.tree.map(lambda *c: jnp.stack(c), *new_layers)
            )

        x_BxLxD = LayerNorm(cfg, name="final_norm")(x_BxLxD)
        # Shared input/output embedding; PaLM scales the pre-softmax logits by 1/sqrt(d_model).
        logits_BxLxV = jnp.einsum(
            "bld,vd->blv", x_BxLxD, embedding_VxD.astype(cfg.compute_dtype)
        ).astype(jnp.float32) * (cfg.d_model**-0.5)
        if cfg.padded_vocab_size != cfg.vocab_size:  # padding rows are never predicted
            is_real_V = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
            logits_BxLxV = jnp.where(is_real_V, logits_BxLxV, jnp.finfo(jnp.float32).min)
        logits_BxLxV = constrain(logits_BxLxV, ("batch", "length", "vocab"))
        return logits_BxLxV, new_cache


def init_cache(config: ModelConfig, batch_size: int, length: int, dtype=jnp.float32):
    """An empty KV cache: the one shared key head and value head of every layer."""
    shape = (config.num_layers, batch_size, length, config.head_dim)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def cross_entropy_and_z_loss(logits_BxLxV, targets_BxL, z_loss_weight: float, weights_BxL=None):
    """Mean next-token cross-entropy and PaLM's auxiliary z-loss (weight * log^2 Z).

    The z-loss pulls the softmax normaliser log Z towards 0, which the paper found increases
    training stability. Returns (cross_entropy, z_loss), each a float32 scalar.
    """
    logits = logits_BxLxV.astype(jnp.float32)
    log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    nll_BxL = log_z_BxL - target_logit_BxL
    z_BxL = z_loss_weight * jnp.square(log_z_BxL)
    if weights_BxL is None:
        return nll_BxL.mean(), z_BxL.mean()
    total = jnp.maximum(weights_BxL.sum(), 1)
    return (nll_BxL * weights_BxL).sum() / total, (z_BxL * weights_BxL).sum() / total
