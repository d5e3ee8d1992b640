"""The jitted eval step: the train step's forward pass and loss, no gradient, no update.

    params (sharded like training), tokens [B, L+1] and weights [B, L] (sharded over
    pod x data) --forward on the train mesh--> per-token nats [B, L]
        -> {nats: sum of weighted nats, tokens: sum of weights}, replicated

Weights zero out padding rows of a last, partial batch, so every call has one shape and the
function compiles once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from palm.config import ModelConfig
from palm.model import PaLM
from palm_platform.mesh import LOGICAL_AXIS_RULES, batch_sharding, replicated


def token_nats(logits_BxLxV, targets_BxL):
    """Next-token negative log-likelihood per position, float32."""
    logits = logits_BxLxV.astype(jnp.float32)
    log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
    return log_z_BxL - jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]


def make_eval_step(model_cfg: ModelConfig, mesh: Mesh, param_shardings) -> Callable:
    """jit(params, tokens [B, L+1], weights [B, L]) -> {nats, tokens}; nothing donated."""
    model = PaLM(model_cfg)

    def eval_step(params, tokens_BxL1, weights_BxL):
        # Whole-batch rules (batch over pod x data): no per-pod vmap without a gradient.
        with (
            jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
            nn.logical_axis_rules(LOGICAL_AXIS_RULES),
        ):
            logits_BxLxV, _ = model.apply({"params": params}, tokens_BxL1[:, :-1])
        nats_BxL = token_nats(logits_BxLxV, tokens_BxL1[:, 1:])
        return {"nats": (nats_BxL * weights_BxL).sum(), "tokens": weights_BxL.sum()}

    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, batch_sharding(mesh), batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )


def make_score_step(model_cfg: ModelConfig) -> Callable:
    """jit(params, tokens [B, L+1], mask [B, L]) -> (log-likelihood [B], all greedy [B]).

    The harness's loglikelihood on one device: mask marks the continuation's target
    positions; a row's score is the sum of their log-probabilities, and it is greedy when
    every one of them is the argmax. One shape per (B, L), so one compile per run.
    """
    model = PaLM(model_cfg)

    def score_step(params, tokens_BxL1, mask_BxL):
        logits_BxLxV, _ = model.apply({"params": params}, tokens_BxL1[:, :-1])
        targets_BxL = tokens_BxL1[:, 1:]
        nats_BxL = token_nats(logits_BxLxV, targets_BxL)
        greedy_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
        return -(nats_BxL * mask_BxL).sum(-1), jnp.where(mask_BxL > 0, greedy_BxL, True).all(-1)

    return jax.jit(score_step)
