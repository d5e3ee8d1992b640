"""The sharded train step and PaLM's optimizer recipe, on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palm.config import PALM_TEST
from palm_platform.job.train import OptimizerConfig
from palm_platform.mesh import make_mesh
from palm_platform.train.optimizer import build_optimizer, learning_rate_schedule
from palm_platform.train.state import init_train_state, state_shardings
from palm_platform.train.step import StepSpec, cross_pod_bytes_per_step, make_train_step

OPT = OptimizerConfig()
# One batch repeated: a working step must lower its loss.
BATCH = jnp.stack([jax.random.randint(jax.random.key(1), (8, 17), 0, PALM_TEST.vocab_size)] * 3)


def run(pods, data, model, microbatches=1, steps=3):
    tx = build_optimizer(OPT)[0]
    mesh = make_mesh(pods, data, model, jax.devices()[: pods * data * model])
    state = init_train_state(PALM_TEST, tx, mesh, seed=0)
    _, shardings = state_shardings(PALM_TEST, tx, mesh)
    step = make_train_step(StepSpec(PALM_TEST, pods, microbatches), tx, mesh, shardings,
                           learning_rate_schedule(OPT))
    metrics = []
    for i in range(steps):
        state, m = step(state, BATCH[i])
        metrics.append({k: float(v) for k, v in m.items()})
    return state, metrics, mesh


@pytest.fixture(scope="module")
def single():
    return run(1, 1, 1)


@pytest.fixture(scope="module")
def sharded():
    return run(2, 2, 2)


def test_learning_rate_is_constant_then_inverse_sqrt():
    lr = learning_rate_schedule(OPT)
    assert float(lr(0)) == pytest.approx(1e-2)
    assert float(lr(9_999)) == pytest.approx(1e-2)
    for k in (20_000, 100_000, 255_000):
        assert float(lr(k - 1)) == pytest.approx(1 / np.sqrt(k), rel=1e-6)


def test_weight_decay_is_lr_squared():
    # With zero gradients Adafactor's update is zero, leaving only the decay: p <- p (1 - lr^2).
    tx = build_optimizer(OptimizerConfig(peak_learning_rate=0.1, constant_steps=1))[0]
    params = {"w": jnp.full((4, 4), 2.0)}
    updates, _ = tx.update({"w": jnp.zeros((4, 4))}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -(0.1**2) * 2.0, rtol=1e-6)


def test_update_is_clipped_and_scaled_by_parameter_rms():
    tx = build_optimizer(OptimizerConfig(weight_decay="none"))[0]
    params = {"w": jnp.full((8, 8), 3.0)}
    grads = {"w": jnp.full((8, 8), 1e3)}
    updates, _ = tx.update(grads, tx.init(params), params)
    # First step: momentum 0.9 keeps (1 - 0.9) of an RMS-1 update, times lr, times RMS(p) = 3.
    np.testing.assert_allclose(updates["w"], -0.1 * 1e-2 * 3.0, rtol=1e-4)


def test_same_seed_and_data_give_bitwise_identical_parameters(single):
    again, _, _ = run(1, 1, 1)
    for a, b in zip(jax.tree.leaves(single[0].params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_step_matches_single_device(single, sharded):
    # Different reduction orders (sums split over devices) change float32 rounding by about
    # 1e-7 relative per step; Adafactor divides by the RMS of the update, which can amplify
    # that on near-zero moments. After 3 steps, 1e-4 of the largest parameter bounds both.
    for a, b in zip(
        jax.tree.leaves(single[0].params), jax.tree.leaves(sharded[0].params), strict=True
    ):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(a).max())
    for ma, mb in zip(single[1], sharded[1], strict=True):
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
    assert sharded[1][-1]["loss"] < sharded[1][0]["loss"]


def test_parameters_are_bitwise_identical_across_pods(sharded):
    state, _, mesh = sharded
    pod_of = {d: p for p in range(2) for d in mesh.devices[p].flat}
    for leaf in jax.tree.leaves(state.params):
        by_index = {}
        for shard in leaf.addressable_shards:
            by_index.setdefault(str(shard.index), {})[pod_of[shard.device]] = np.asarray(shard.data)
        for copies in by_index.values():
            np.testing.assert_array_equal(copies[0], copies[1])


def test_parameters_are_sharded_over_data_and_model_not_pod(sharded):
    gate = sharded[0].params["layers"]["mlp"]["gate"]
    assert tuple(gate.sharding.spec) == (None, "data", "model")
    embedding = sharded[0].params["embedding"]
    assert tuple(embedding.sharding.spec) == ("model", "data")


def test_gradient_accumulation_matches_one_big_batch(single):
    accumulated, metrics, _ = run(1, 1, 1, microbatches=2)
    for a, b in zip(
        jax.tree.leaves(single[0].params), jax.tree.leaves(accumulated.params), strict=True
    ):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(a).max())
    assert metrics[0]["loss"] == pytest.approx(single[1][0]["loss"], rel=1e-5)


def test_cross_pod_bytes_per_step():
    params = {"a": jnp.zeros((1000,)), "b": jnp.zeros((10, 100))}
    assert cross_pod_bytes_per_step(params, pods=1, dtype="float32") == 0
    assert cross_pod_bytes_per_step(params, pods=2, dtype="float32") == 2000 * 4
    assert cross_pod_bytes_per_step(params, pods=2, dtype="bfloat16") == 2000 * 2
