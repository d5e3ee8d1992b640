"""The sharded 2-pod step and the optimizer's clip against independent computations.

Adafactor's update barely depends on the scale of the gradient (at step 1 it is about the
gradient's sign, and rounding noise flips the sign of near-zero entries), so comparing
parameters after Adafactor cannot tell a mean from a sum across pods or microbatches, and
cannot compare updates entry by entry. So:
- the step is built with plain SGD (lr 1), whose update is exactly minus the gradient the
  step computed, and that update and `grad_norm` are compared with a single-device
  `jax.grad` of the same loss over the whole batch;
- PaLM's optimizer (global-norm clip, then Adafactor) is compared with the same gradients
  clipped in numpy and fed to an otherwise identical optimizer whose clip never binds, over
  two steps with norms above the clip (Adafactor's second step depends on the ratio of the
  two clipped gradients, so a missing or wrong clip changes it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from palm.config import PALM_TEST
from palm.model import PaLM, cross_entropy_and_z_loss
from palm_platform.job.train import OptimizerConfig
from palm_platform.mesh import make_mesh
from palm_platform.train.optimizer import build_optimizer, learning_rate_schedule
from palm_platform.train.state import init_train_state, state_shardings
from palm_platform.train.step import StepSpec, make_train_step

OPT = OptimizerConfig()
TOKENS = jax.random.randint(jax.random.key(1), (8, 17), 0, PALM_TEST.vocab_size)


def whole_batch_loss(params, tokens):
    logits, _ = PaLM(PALM_TEST).apply({"params": params}, tokens[:, :-1])
    ce, z = cross_entropy_and_z_loss(logits, tokens[:, 1:], PALM_TEST.z_loss)
    return ce + z


def global_norm(tree) -> float:
    return float(
        np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(tree)))
    )


@pytest.fixture(scope="module")
def reference():
    """(initial params, whole-batch gradient) on one device, in numpy."""
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    params = jax.tree.map(np.asarray, init_train_state(PALM_TEST, optax.sgd(1.0), mesh, 0).params)
    grads = jax.tree.map(np.asarray, jax.jit(jax.grad(whole_batch_loss))(params, TOKENS))
    return params, grads, whole_batch_losses(params, TOKENS)


@jax.jit  # one compile instead of seconds of op-by-op dispatch on 2 cores
def _whole_batch_losses(params, tokens):
    logits, _ = PaLM(PALM_TEST).apply({"params": params}, tokens[:, :-1])
    return cross_entropy_and_z_loss(logits, tokens[:, 1:], PALM_TEST.z_loss)


def whole_batch_losses(params, tokens):
    ce, z = _whole_batch_losses(params, tokens)
    return float(ce), float(z)


# bfloat16 on the wire rounds each pod's gradient to 8 significant bits (relative error at
# most 2^-9 per entry); float32 differs only in summation order across devices.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-3}


@pytest.mark.parametrize(("microbatches", "cross_pod_dtype"),
                         [(1, "float32"), (2, "float32"), (1, "bfloat16"), (2, "bfloat16")])
def test_two_pod_step_gradient_is_the_whole_batch_gradient(
    reference, microbatches, cross_pod_dtype
):
    ref_params, ref_grads, (ref_ce, ref_z) = reference
    tx = optax.sgd(1.0)  # update == -gradient: the step's gradient, observable exactly
    mesh = make_mesh(2, 2, 2, jax.devices()[:8])
    _, shardings = state_shardings(PALM_TEST, tx, mesh)
    state = init_train_state(PALM_TEST, tx, mesh, seed=0)
    step = make_train_step(StepSpec(PALM_TEST, 2, microbatches, cross_pod_dtype), tx, mesh,
                           shardings, learning_rate_schedule(OPT))
    state, metrics = step(state, TOKENS)
    tol = TOLERANCE[cross_pod_dtype]
    # The mean over pods and microbatches of per-shard mean-loss gradients is the gradient
    # of the whole batch's mean loss; a sum anywhere doubles it.
    assert float(metrics["grad_norm"]) == pytest.approx(global_norm(ref_grads), rel=tol)
    # The reported losses are the whole batch's too (means over pods and microbatches).
    assert float(metrics["loss"]) == pytest.approx(ref_ce, rel=1e-5)
    assert float(metrics["z_loss"]) == pytest.approx(ref_z, rel=1e-5)
    after = jax.tree.map(np.asarray, state.params)
    worst = 0.0
    for p0, p1, g in zip(jax.tree.leaves(ref_params), jax.tree.leaves(after),
                         jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(p0 - p1, g, rtol=0, atol=tol * np.abs(g).max())
        worst = max(worst, float(np.abs(p0 - p1 - g).max() / np.abs(g).max()))
    if cross_pod_dtype == "bfloat16":  # the exchange really rounds to bfloat16 on the wire
        assert worst > 1e-4


def _clip_in_numpy(grads, limit):
    scale = min(1.0, limit / global_norm(grads))
    return jax.tree.map(lambda g: (np.asarray(g, np.float64) * scale).astype(np.float32), grads)


@pytest.mark.parametrize("limit", [1.0, 0.3])
def test_optimizer_clips_the_global_norm_before_adafactor(limit):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(16, 8)).astype(np.float32),
              "b": rng.normal(size=(8,)).astype(np.float32)}
    # Norms about 47 and 6: both above either limit, and unequal, so clipped and unclipped
    # gradients have different ratios and Adafactor's second step tells them apart.
    steps = [jax.tree.map(lambda p, s=s: (rng.normal(size=p.shape) * s).astype(np.float32), params)
             for s in (4.0, 0.5)]
    assert all(global_norm(g) > limit * 4 for g in steps)
    clipped_tx = build_optimizer(OPT.model_copy(update={"clip_global_norm": limit}))[0]
    never_clips = build_optimizer(OPT.model_copy(update={"clip_global_norm": 1e30}))[0]
    state, ref_state = clipped_tx.init(params), never_clips.init(params)
    p, ref_p = params, params
    for grads in steps:
        updates, state = clipped_tx.update(grads, state, p)
        ref_updates, ref_state = never_clips.update(_clip_in_numpy(grads, limit), ref_state, ref_p)
        p, ref_p = optax.apply_updates(p, updates), optax.apply_updates(ref_p, ref_updates)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    # ... and the clip matters here: without it the second update is not the same.
    unclipped_p, unclipped_state = params, never_clips.init(params)
    for grads in steps:
        unclipped, unclipped_state = never_clips.update(grads, unclipped_state, unclipped_p)
        unclipped_p = optax.apply_updates(unclipped_p, unclipped)
    assert not np.allclose(unclipped["w"], ref_updates["w"], rtol=1e-3)


def test_optimizer_leaves_a_gradient_under_the_limit_alone():
    params = {"w": np.full((4, 4), 2.0, np.float32)}
    small = {"w": np.full((4, 4), 0.01, np.float32)}  # norm 0.04 < 1
    big = {"w": np.full((4, 4), 10.0, np.float32)}
    tx = build_optimizer(OPT)[0]
    never_clips = build_optimizer(OPT.model_copy(update={"clip_global_norm": 1e30}))[0]
    s, r = tx.init(params), never_clips.init(params)
    for grads in (big, small):
        u, s = tx.update(grads, s, params)
        ref, r = never_clips.update(_clip_in_numpy(grads, 1.0), r, params)
        np.testing.assert_allclose(u["w"], ref["w"], rtol=1e-5)
    assert jnp.isfinite(u["w"]).all()


def numpy_palm_optimizer(cfg: OptimizerConfig, params: dict, grad_steps: list[dict]) -> list[dict]:
    """PaLM's recipe written out in numpy, one leaf at a time (float64), for comparison:
    global-norm clip; second moment v = b2 v + (1 - b2)(g^2 + 1e-30) with b2 = 1 - k^-exponent;
    u = g / sqrt(v); u /= max(1, rms(u) / clip_update_rms); u *= lr; u *= max(rms(p), 1e-3);
    momentum m = beta1 m + (1 - beta1) u (no debiasing); u = m + lr^2 p (weight decay); p -= u.
    Returns the parameters after each step."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    m = {k: np.zeros_like(x) for k, x in p.items()}
    out = []
    for count, grads in enumerate(grad_steps):
        g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
        norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
        g = {k: x * min(1.0, cfg.clip_global_norm / norm) for k, x in g.items()}
        k_step = max(count + 1, cfg.constant_steps)
        lr = cfg.peak_learning_rate * np.sqrt(cfg.constant_steps / k_step)
        beta2 = 1.0 - (count + 1.0) ** -cfg.second_moment_exponent
        for name in p:
            v[name] = beta2 * v[name] + (1 - beta2) * (g[name] ** 2 + 1e-30)
            u = g[name] / np.sqrt(v[name])
            u /= max(1.0, np.sqrt(np.mean(u**2)) / cfg.clip_update_rms)
            u *= lr * max(np.sqrt(np.mean(p[name] ** 2)), 1e-3)
            m[name] = cfg.beta1 * m[name] + (1 - cfg.beta1) * u
            p[name] = p[name] - (m[name] + lr**2 * p[name])
        out.append({k: x.copy() for k, x in p.items()})
    return out


@pytest.mark.parametrize("cfg", [
    OptimizerConfig(),
    OptimizerConfig(peak_learning_rate=0.05, constant_steps=2, beta1=0.5,
                     second_moment_exponent=0.5, clip_global_norm=0.7, clip_update_rms=0.3),
], ids=["palm", "every-field-changed"])
def test_optimizer_follows_the_recipe_written_in_numpy(cfg):
    rng = np.random.default_rng(1)
    # "k" is large enough (both sides >= 128) that a factored second moment would be used
    # for it if `factored` were on: PaLM's recipe keeps the full second moment.
    params = {"w": rng.normal(size=(6, 5)).astype(np.float32),
              "b": (rng.normal(size=(5,)) * 0.1).astype(np.float32),
              "k": (rng.normal(size=(128, 130)) * 0.02).astype(np.float32)}
    grad_steps = [{k: (rng.normal(size=x.shape) * scale).astype(np.float32)
                   for k, x in params.items()} for scale in (3.0, 0.05, 1.0, 0.2)]
    expected = numpy_palm_optimizer(cfg, params, grad_steps)
    tx = build_optimizer(cfg)[0]
    state, p = tx.init(params), params
    for grads, want in zip(grad_steps, expected, strict=True):
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        for name in params:
            np.testing.assert_allclose(p[name], want[name], rtol=1e-5, atol=1e-7)
