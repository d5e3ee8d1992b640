"""The PaLM model as the paper describes it, checked on tiny configs on CPU."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from palm.config import PALM_8B, PALM_62B, PALM_540B, PALM_TEST, PRESETS, preset
from palm.decode import generate, generate_uncached
from palm.flops import mfu, train_flops_per_token
from palm.layers import rotary
from palm.model import PaLM, cross_entropy_and_z_loss

CFG = PALM_TEST  # D=32, 2 layers, 2 heads of 16, V=64, float32


# Jitted, not op by op: one compile of the whole tiny model (loaded from the session's
# compilation cache after the first) instead of dispatching each op eagerly, which cost seconds
# per call on 2 cores. The values are the same functions of the same inputs.
@functools.partial(jax.jit, static_argnums=0)
def variables_of(cfg, key, tokens):
    """PaLM(cfg).init: the boxed (logically partitioned) variables, perturbations included."""
    return PaLM(cfg).init(key, tokens)


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg, params, tokens):
    return PaLM(cfg).apply({"params": params}, tokens)[0]


def init(cfg=CFG, length=16, seed=0):
    tokens = jnp.zeros((2, length), jnp.int32)
    return nn.meta.unbox(variables_of(cfg, jax.random.key(seed), tokens)["params"])


def logits_of(params, tokens, cfg=CFG):
    return _logits(cfg, params, tokens)


@pytest.mark.parametrize(
    "cfg,paper_params",
    [(PALM_8B, 8.63e9), (PALM_62B, 62.50e9), (PALM_540B, 540.35e9)],
    ids=["8b", "62b", "540b"],
)
def test_parameter_counts_match_paper_table_1(cfg, paper_params):
    assert abs(cfg.num_params() - paper_params) / paper_params < 0.005


def test_paper_shapes():
    assert (PALM_540B.num_layers, PALM_540B.d_model, PALM_540B.num_heads) == (118, 18432, 48)
    assert PALM_540B.attention_width == 12288 and PALM_540B.d_ff == 4 * 18432
    assert all(
        c.head_dim == 256 and c.vocab_size == 256_000 for c in (PALM_8B, PALM_62B, PALM_540B)
    )


def test_param_count_formula_matches_initialised_model():
    cfg = dataclasses.replace(CFG, num_layers=3, d_model=48, num_heads=3)
    params = init(cfg)
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


def test_540b_flops_reproduce_paper_mfu():
    # Paper: 238.3k tokens/s on 6144 TPU v4 chips (275 TFLOP/s bf16 each) is 46.2% MFU.
    achieved = mfu(238.3e3, train_flops_per_token(PALM_540B), 6144 * 275e12)
    assert achieved == pytest.approx(0.462, abs=0.001)


def test_logits_shape_and_dtypes():
    cfg = dataclasses.replace(CFG, compute_dtype="bfloat16")
    params = init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    logits = logits_of(params, jnp.ones((2, 16), jnp.int32), cfg)
    assert logits.shape == (2, 16, cfg.vocab_size) and logits.dtype == jnp.float32


def test_no_biases_and_one_kv_head():
    params = init()
    names = {
        "/".join(str(k.key) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    }
    assert not any("bias" in n for n in names)
    assert "output" not in str(names) and "lm_head" not in str(names)  # embedding is shared
    H, Q, D, N = CFG.num_heads, CFG.head_dim, CFG.d_model, CFG.num_layers
    attn = params["layers"]["attention"]
    assert attn["query"].shape == (N, D, H, Q)
    assert attn["key"].shape == attn["value"].shape == (N, D, Q)  # one K and one V head


def test_every_parameter_has_logical_axis_names():
    boxed = variables_of(CFG, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    allowed = {"batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers"}
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned)
        assert set(leaf.names) <= allowed and len(leaf.names) == leaf.value.ndim


def test_initialisation_scales():
    cfg = dataclasses.replace(CFG, d_model=256, num_heads=4, head_dim=64, vocab_size=512)
    params = init(cfg)
    assert np.std(params["embedding"]) == pytest.approx(1.0, rel=0.05)
    gate = params["layers"]["mlp"]["gate"]  # fan_in = d_model
    assert np.var(gate) == pytest.approx(1 / cfg.d_model, rel=0.05)
    out = params["layers"]["attention"]["out"]  # fan_in = H * Q
    assert np.var(out) == pytest.approx(1 / cfg.attention_width, rel=0.05)


def test_causality_through_gradients():
    params = init()
    tokens = jax.random.randint(jax.random.key(1), (1, 16), 0, CFG.vocab_size)
    model = PaLM(CFG)
    perturbations = variables_of(CFG, jax.random.key(0), tokens)["perturbations"]
    t = 9

    def logit_sum_before_t(perturbations):
        return model.apply({"params": params, "perturbations": perturbations}, tokens)[0][
            :, :t
        ].sum()

    grad_1xLxD = jax.jit(jax.grad(logit_sum_before_t))(perturbations)["embedded"]
    assert np.all(np.asarray(grad_1xLxD[:, t:]) == 0.0)  # no path from position >= t backwards
    assert np.all(np.abs(np.asarray(grad_1xLxD[:, :t])).sum(-1) > 0)


def test_changing_a_token_leaves_earlier_logits_unchanged():
    params = init()
    tokens = jax.random.randint(jax.random.key(2), (1, 16), 0, CFG.vocab_size)
    changed = tokens.at[0, 11].set((tokens[0, 11] + 1) % CFG.vocab_size)
    a, b = logits_of(params, tokens), logits_of(params, changed)
    np.testing.assert_array_equal(a[:, :11], b[:, :11])
    assert not np.allclose(a[:, 11:], b[:, 11:])


def test_rope_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))

    def score(pq, pk):
        rq = rotary(q, jnp.array([[pq]]), 10_000.0)
        rk = rotary(k, jnp.array([[pk]]), 10_000.0)
        return float(jnp.sum(rq * rk))

    assert score(5, 2) == pytest.approx(score(105, 102), rel=1e-4, abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def test_scan_and_unrolled_layers_agree():
    unrolled = dataclasses.replace(CFG, scan_layers=False)
    params = init()
    per_layer = {
        "embedding": params["embedding"],
        "final_norm": params["final_norm"],
        **{
            f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], params["layers"])
            for i in range(CFG.num_layers)
        },
    }
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, CFG.vocab_size)
    np.testing.assert_allclose(
        logits_of(params, tokens), logits_of(per_layer, tokens, unrolled), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_give_the_same_gradients(remat):
    params = init()
    tokens = jax.random.randint(jax.random.key(4), (2, 16), 0, CFG.vocab_size)

    def grads(cfg):
        def loss(p):
            ce, z = cross_entropy_and_z_loss(
                logits_of(p, tokens[:, :-1], cfg), tokens[:, 1:], cfg.z_loss
            )
            return ce + z
        return jax.jit(jax.grad(loss))(params)

    reference = grads(CFG)  # CFG keeps every activation (remat="none")
    for a, b in zip(jax.tree.leaves(grads(dataclasses.replace(CFG, remat=remat))),
                    jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_z_loss_is_weight_times_log_z_squared():
    logits = jnp.array([[[1.0, 2.0, 3.0]]])
    ce, z = cross_entropy_and_z_loss(logits, jnp.array([[2]]), 1e-4)
    log_z = float(jax.nn.logsumexp(logits))
    assert float(z) == pytest.approx(1e-4 * log_z**2)
    assert float(ce) == pytest.approx(log_z - 3.0)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cached_decoding_matches_recomputing_the_prefix(temperature):
    params = init(seed=5)
    prompt = jax.random.randint(jax.random.key(6), (3, 5), 0, CFG.vocab_size)
    kw = dict(config=CFG, max_new_tokens=12, temperature=temperature)
    cached = generate(params, prompt, jax.random.key(7), **kw)
    uncached = generate_uncached(params, prompt, jax.random.key(7), **kw)
    np.testing.assert_array_equal(cached[:, :5], prompt)
    np.testing.assert_array_equal(cached, uncached)


def test_tiny_model_overfits_a_repeated_text():
    import optax

    cfg = dataclasses.replace(CFG, vocab_size=32)
    text = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4] * 2, np.int32)
    tokens = jnp.asarray(np.stack([text[:33], text[1:34]]))
    params = init(cfg)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss(p):
            return cross_entropy_and_z_loss(
                logits_of(p, tokens[:, :-1], cfg), tokens[:, 1:], cfg.z_loss
            )[0]
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    first = None
    for _ in range(300):
        params, opt, value = step(params, opt)
        first = float(value) if first is None else first
    assert first > 2.5 and float(value) < 0.1 * first


def test_presets_and_overrides():
    assert set(PRESETS) >= {"palm-8b", "palm-62b", "palm-540b"}
    assert preset("palm-8b", num_layers=2).num_layers == 2
    with pytest.raises(KeyError, match="unknown model preset"):
        preset("palm-9b")


def test_one_hot_embedding_lookup_gives_the_same_logits():
    params = init()
    tokens = jax.random.randint(jax.random.key(8), (2, 16), 0, CFG.vocab_size)
    one_hot = dataclasses.replace(CFG, embed_lookup="one_hot")
    np.testing.assert_allclose(logits_of(params, tokens), logits_of(params, tokens, one_hot),
                               rtol=1e-6, atol=1e-6)


def test_padded_vocabulary_rows_are_never_predicted():
    cfg = dataclasses.replace(CFG, vocab_size=60, vocab_pad_multiple=32)  # 64 rows
    params = init(cfg)
    assert params["embedding"].shape == (64, cfg.d_model) and cfg.num_params() < sum(
        x.size for x in jax.tree.leaves(params))
    probs = jax.nn.softmax(logits_of(params, jnp.ones((1, 8), jnp.int32), cfg), axis=-1)
    assert float(probs[..., 60:].max()) == 0.0
