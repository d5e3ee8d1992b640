"""PaLM's layers: bias-free LayerNorm, RoPE, multi-query attention, SwiGLU.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`); the
platform maps them to mesh axes. Nothing here knows about meshes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from palm.config import ModelConfig


# PaLM: kernels ~ N(0, 1/fan_in) ("1/sqrt(n_in)" standard deviation), a plain normal.
def fan_in_init(in_axis, out_axis):
    return nn.initializers.variance_scaling(
        1.0, "fan_in", "normal", in_axis=in_axis, out_axis=out_axis
    )


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Shard an activation by logical names (a no-op unless the platform set axis rules)."""
    return nn.with_logical_constraint(x, names)


class LayerNorm(nn.Module):
    """LayerNorm with a scale and no bias (PaLM uses no biases anywhere)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        cfg = self.config
        scale_D = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (cfg.d_model,), jnp.dtype(cfg.param_dtype),
        )
        x = x_BxLxD.astype(jnp.float32)  # statistics in float32 whatever the compute dtype
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + cfg.layernorm_epsilon) * scale_D.astype(jnp.float32)
        return y.astype(cfg.compute_dtype)


def rotary(x_BxLxHxQ: jax.Array, positions_BxL: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (Su et al.) over the whole head: rotate pairs (i, i + Q/2)."""
    half = x_BxLxHxQ.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BxLx1xQ2 = (positions_BxL.astype(jnp.float32)[..., None] * inv_freq)[:, :, None, :]
    sin, cos = jnp.sin(angle_BxLx1xQ2), jnp.cos(angle_BxLx1xQ2)
    x = x_BxLxHxQ.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxQ.dtype)


class MultiQueryAttention(nn.Module):
    """H query heads share one key head and one value head (Shazeer 2019), with RoPE.

    `cache` (decoding) is a pair of [B, T, Q] arrays holding that single K/V head; the new
    keys and values of row b are written at `positions[b, 0]` and attention runs over the
    whole cache, masked causally by absolute position (so a row never sees slots past its
    own position, whatever a longer row wrote there).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD, positions_BxL, cache=None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
        D, H, Q = cfg.d_model, cfg.num_heads, cfg.head_dim
        wq_DxHxQ = self.param(
            "query", nn.with_logical_partitioning(fan_in_init(0, (1, 2)), ("embed", "heads", "kv")),
            (D, H, Q), pdtype,
        )
        wk_DxQ = self.param(
            "key", nn.with_logical_partitioning(fan_in_init(0, 1), ("embed", "kv")), (D, Q), pdtype
        )
        wv_DxQ = self.param(
            "value",
            nn.with_logical_partitioning(fan_in_init(0, 1), ("embed", "kv")),
            (D, Q),
            pdtype,
        )
        wo_HxQxD = self.param(
            "out", nn.with_logical_partitioning(fan_in_init((0, 1), 2), ("heads", "kv", "embed")),
            (H, Q, D), pdtype,
        )
        x = x_BxLxD.astype(dtype)
        q_BxLxHxQ = jnp.einsum("bld,dhq->blhq", x, wq_DxHxQ.astype(dtype))
        k_BxLxQ = jnp.einsum("bld,dq->blq", x, wk_DxQ.astype(dtype))
        v_BxLxQ = jnp.einsum("bld,dq->blq", x, wv_DxQ.astype(dtype))
        q_BxLxHxQ = constrain(q_BxLxHxQ, ("batch", "length", "heads", "kv"))
        q_BxLxHxQ = rotary(q_BxLxHxQ, positions_BxL, cfg.rope_base) * (Q**-0.5)
        k_BxLxQ = rotary(k_BxLxQ[:, :, None, :], positions_BxL, cfg.rope_base)[:, :, 0, :]

        if cache is None:
            k_BxTxQ, v_BxTxQ, key_positions_BxT = k_BxLxQ, v_BxLxQ, positions_BxL
            new_cache = None
        else:
            cache_k, cache_v = cache
            # Each row writes at its own first position: rows of a batch may stand at
            # different positions (prompts of different lengths decoding together).
            write = jax.vmap(
                lambda c_TxQ, x_LxQ, start: jax.lax.dynamic_update_slice(c_TxQ, x_LxQ, (start, 0))
            )
            k_BxTxQ = write(cache_k, k_BxLxQ.astype(cache_k.dtype), positions_BxL[:, 0])
            v_BxTxQ = write(cache_v, v_BxLxQ.astype(cache_v.dtype), positions_BxL[:, 0])
            new_cache = (k_BxTxQ, v_BxTxQ)
            T = cache_k.shape[1]
            key_positions_BxT = jnp.broadcast_to(jnp.arange(T), (x.shape[0], T))
            k_BxTxQ, v_BxTxQ = k_BxTxQ.astype(dtype), v_BxTxQ.astype(dtype)

        scores_BxHxLxT = jnp.einsum("blhq,btq->bhlt", q_BxLxHxQ, k_BxTxQ).astype(jnp.float32)
        causal_Bx1xLxT = (key_positions_BxT[:, None, None, :] <= positions_BxL[:, None, :, None])
        scores_BxHxLxT = jnp.where(causal_Bx1xLxT, scores_BxHxLxT, jnp.finfo(jnp.float32).min)
        probs_BxHxLxT = jax.nn.softmax(scores_BxHxLxT, axis=-1).astype(dtype)
        attn_BxLxHxQ = jnp.einsum("bhlt,btq->blhq", probs_BxHxLxT, v_BxTxQ)
        out_BxLxD = jnp.einsum("blhq,hqd->bld", attn_BxLxHxQ, wo_HxQxD.astype(dtype))
        return out_BxLxD, new_cache


class SwiGLU(nn.Module):
    """MLP(x) = (Swish(x W_gate) * x W_up) W_down, no biases."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
        D, F = cfg.d_model, cfg.d_ff
        w_gate_DxF = self.param(
            "gate",
            nn.with_logical_partitioning(fan_in_init(0, 1), ("embed", "mlp")),
            (D, F),
            pdtype,
        )
        w_up_DxF = self.param(
            "up", nn.with_logical_partitioning(fan_in_init(0, 1), ("embed", "mlp")), (D, F), pdtype
        )
        w_down_FxD = self.param(
            "down",
            nn.with_logical_partitioning(fan_in_init(0, 1), ("mlp", "embed")),
            (F, D),
            pdtype,
        )
        x = x_BxLxD.astype(dtype)
        gate_BxLxF = jnp.einsum("bld,df->blf", x, w_gate_DxF.astype(dtype))
        up_BxLxF = jnp.einsum("bld,df->blf", x, w_up_DxF.astype(dtype))
        hidden_BxLxF = constrain(jax.nn.silu(gate_BxLxF) * up_BxLxF, ("batch", "length", "mlp"))
        return jnp.einsum("blf,fd->bld", hidden_BxLxF, w_down_FxD.astype(dtype))
