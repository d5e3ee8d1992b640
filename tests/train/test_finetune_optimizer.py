"""The fine-tuning knobs: learning-rate schedules and warm-up, frozen parameter groups, and
dropout (off unless ModelConfig.dropout_rate > 0, deterministic in (seed, step))."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palm.config import preset
from palm.model import PaLM
from palm_platform.job.train import OptimizerConfig
from palm_platform.mesh import make_mesh
from palm_platform.train.optimizer import build_optimizer, learning_rate_schedule
from palm_platform.train.state import init_train_state, state_shardings
from palm_platform.train.step import StepSpec, make_train_step

TOKENS = np.random.RandomState(0).randint(0, 64, (8, 17)).astype(np.int32)


@functools.cache
# compiled once per (model, optimizer, seed)
def compiled_step(cfg, optimizer_json: str, seed: int):
    optimizer = OptimizerConfig.model_validate_json(optimizer_json)
    tx, mesh = build_optimizer(optimizer)[0], make_mesh(2, 2, 2)
    _, shardings = state_shardings(cfg, tx, mesh)
    step = make_train_step(StepSpec(cfg, pods=2, dropout_seed=seed), tx, mesh, shardings,
                           learning_rate_schedule(optimizer))
    return step, tx, mesh


def train(cfg, optimizer: OptimizerConfig, steps: int, *, seed: int = 0, state=None):
    step, tx, mesh = compiled_step(cfg, optimizer.model_dump_json(), seed)
    state = init_train_state(cfg, tx, mesh, 0) if state is None else state
    losses = []
    for _ in range(steps):
        state, metrics = step(state, TOKENS)
        losses.append(float(metrics["loss"]))
    return state, losses


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_schedules_constant_linear_decay_and_warmup():
    constant = learning_rate_schedule(OptimizerConfig(schedule="constant", peak_learning_rate=1e-3))
    assert float(constant(0)) == float(constant(10**6)) == pytest.approx(1e-3)
    decay = learning_rate_schedule(OptimizerConfig(
        schedule="linear_decay", peak_learning_rate=1e-3, decay_steps=100, final_learning_rate=1e-4,
        warmup_steps=10))
    assert float(decay(0)) == 0.0 and float(decay(5)) == pytest.approx(5e-4)
    assert float(decay(10)) == pytest.approx(1e-3) and float(decay(60)) == pytest.approx(5.5e-4)
    assert float(decay(110)) == float(decay(10**6)) == pytest.approx(1e-4)
    palm = learning_rate_schedule(OptimizerConfig(constant_steps=100))
    assert float(palm(99)) == pytest.approx(1e-2) and float(palm(399)) == pytest.approx(5e-3)


@pytest.mark.slow
def test_frozen_groups_keep_their_values_and_the_rest_trains():
    cfg = preset("palm-test")
    start = jax.tree.map(np.asarray, init_train_state(cfg, build_optimizer(OptimizerConfig())[0],
                                                      make_mesh(2, 2, 2), 0).params)
    state, _ = train(cfg, OptimizerConfig(frozen=["embedding", "norm"], schedule="constant"), 3)
    np.testing.assert_array_equal(np.asarray(state.params["embedding"]), start["embedding"])
    np.testing.assert_array_equal(np.asarray(state.params["layers"]["norm"]["scale"]),
                                  start["layers"]["norm"]["scale"])
    assert not np.array_equal(np.asarray(state.params["layers"]["mlp"]["gate"]),
                              start["layers"]["mlp"]["gate"])
    assert not np.array_equal(np.asarray(state.params["final_norm"]["scale"]),
                              start["final_norm"]["scale"])


def test_unknown_frozen_group_is_a_job_error():
    with pytest.raises(ValueError, match=r"unknown parameter group\(s\) \['embeddings'\]"):
        OptimizerConfig(frozen=["embeddings"])


def test_a_dropout_rate_of_zero_changes_nothing_in_the_model():
    cfg = preset("palm-test")
    # jitted: one compile each instead of seconds of op-by-op dispatch (same values)
    params = jax.jit(lambda k, t: PaLM(cfg).init(k, t))(jax.random.key(0),
                                                        jnp.asarray(TOKENS))["params"]
    eval_logits, _ = jax.jit(lambda p, t: PaLM(cfg).apply({"params": p}, t))(params, TOKENS)
    train_logits, _ = jax.jit(lambda p, t, k: PaLM(cfg, deterministic=False).apply(
        {"params": p}, t, rngs={"dropout": k}))(params, TOKENS, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(eval_logits), np.asarray(train_logits))


@pytest.mark.slow
def test_dropout_is_a_function_of_seed_and_step():
    cfg = preset("palm-test", dropout_rate=0.1)
    plain, plain_losses = train(preset("palm-test"), OptimizerConfig(), 2)
    first, losses = train(cfg, OptimizerConfig(), 2, seed=3)
    again, _ = train(cfg, OptimizerConfig(), 2, seed=3)
    other, _ = train(cfg, OptimizerConfig(), 2, seed=4)
    for a, b in zip(leaves(first.params), leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)  # same (seed, step): same masks, bitwise
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(first.params), leaves(other.params),
                                                          strict=True))
    assert losses[0] != plain_losses[0]  # dropout is really applied in the train step
    # Restart-safe: from the state after step 1, step 2 is the uninterrupted run's step 2.
    one, _ = train(cfg, OptimizerConfig(), 1, seed=3)
    resumed, _ = train(cfg, OptimizerConfig(), 1, seed=3, state=one)
    for a, b in zip(leaves(first.params), leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
