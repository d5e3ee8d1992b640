"""PaLM's optimizer recipe (§5) with Optax.

Adafactor *without factorisation* (so Adam-like) with parameter scaling; momentum 0.9;
second-moment decay beta2 = 1 - k^-0.8; update clipping at RMS 1.0; global-norm gradient
clipping 1.0; learning rate 1e-2 for the first 10k steps, then 1/sqrt(k); weight decay lr^2.
For fine-tuning the job may pick a constant or linearly decaying learning rate, a warm-up,
and parameter groups to freeze (`optimizer.frozen`, e.g. the embedding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

# The job's `optimizer:` section (job/train.py's OptimizerConfig). Not imported here:
# its `build()` imports this module, and config.py stays free of Optax and JAX.
OptimizerSection = Any


def palm_schedule(cfg: OptimizerSection) -> optax.Schedule:
    """peak for `constant_steps`, then peak * sqrt(constant_steps / k): PaLM's
    1/sqrt(max(k, 10^4))."""

    def schedule(count):
        k = jnp.maximum(count + 1, cfg.constant_steps).astype(jnp.float32)  # k counts from 1
        return cfg.peak_learning_rate * jnp.sqrt(cfg.constant_steps / k)

    return schedule


def learning_rate_schedule(cfg: OptimizerSection) -> optax.Schedule:
    """The job's schedule (PaLM's by default; constant or linear decay for fine-tuning),
    after an optional linear warm-up from 0."""
    if cfg.schedule == "palm":
        main = palm_schedule(cfg)
    elif cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.peak_learning_rate)
    else:
        main = optax.linear_schedule(cfg.peak_learning_rate, cfg.final_learning_rate,
                                     cfg.decay_steps)
    if cfg.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, cfg.peak_learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def frozen_labels(frozen: list[str]):
    """params -> a tree of "frozen" / "train" labels: a parameter is frozen when a component of
    its path (e.g. layers/attention/query) is one of the `frozen` group names."""

    def labels(params):
        def label(path, _):
            names = {str(getattr(k, "key", k)) for k in path}
            return "frozen" if names & set(frozen) else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return labels


def build_optimizer(cfg: OptimizerSection) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule), through `OptimizerConfig.build()`: the one place the
    learning-rate schedule is made, so the step logs the very function the optimizer uses."""
    lr = learning_rate_schedule(cfg)
    palm = _palm_optimizer(cfg, lr)
    if not cfg.frozen:
        return palm, lr
    # Frozen groups get zero updates and keep no optimizer state (optax masks them out).
    return optax.multi_transform({"train": palm, "frozen": optax.set_to_zero()},
                                 frozen_labels(cfg.frozen)), lr


def _palm_optimizer(cfg: OptimizerSection, lr: optax.Schedule) -> optax.GradientTransformation:
    # optax applies Adafactor's weight_decay_rate *after* scaling by the learning rate, so the
    # per-step shrinkage is weight_decay_rate * param: pass lr^2 itself to get PaLM's lr^2.
    weight_decay = (lambda count: lr(count) ** 2) if cfg.weight_decay == "lr_squared" else None
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_global_norm),
        optax.adafactor(
            learning_rate=lr,
            factored=False,
            decay_rate=cfg.second_moment_exponent,
            multiply_by_parameter_scale=True,
            clipping_threshold=cfg.clip_update_rms,
            momentum=cfg.beta1,
            weight_decay_rate=weight_decay,
        ),
    )
