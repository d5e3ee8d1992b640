"""The jitted train step: per-pod gradients, one explicit cross-pod exchange, one update.

    tokens [B, L+1] --split--> [pods, microbatches, b, L+1]
        each pod (vmapped over the `pod` mesh axis): scan over microbatches, summing the
        gradients of cross-entropy + z-loss -> that pod's gradient (sharded over data/model)
    cross_pod_gradient_exchange: mean over pods -- the only traffic on the `pod` axis
    optimizer update, identical on every pod -> bitwise-identical parameters on both pods
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from palm.config import ModelConfig
from palm.model import PaLM, cross_entropy_and_z_loss
from palm_platform.mesh import IN_POD_RULES, batch_sharding, replicated
from palm_platform.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepSpec:
    model: ModelConfig
    pods: int
    microbatches: int = 1
    cross_pod_dtype: str = "float32"  # PaLM's DCN exchange moved bfloat16 gradients
    dropout_seed: int = 0  # dropout masks are a function of (dropout_seed, step, pod, microbatch)


def cross_pod_gradient_exchange(grads_per_pod, dtype: str, param_shardings):
    """THE place gradients cross pods: every pod ends with the mean of all pods' gradients.

    grads_per_pod has a leading `pod` axis sharded over the `pod` mesh axis; reducing it to
    a result replicated over `pod` is an all-reduce between matching shards of the pods
    (host i of pod 0 <-> host i of pod 1), over the data-center network on TPU.
    """

    def exchange(g_PxX, sharding):
        g = g_PxX.astype(dtype).sum(0).astype(jnp.float32) / g_PxX.shape[0]
        return jax.lax.with_sharding_constraint(g, sharding)

    return jax.tree.map(exchange, grads_per_pod, param_shardings)


def cross_pod_bytes_per_step(params, pods: int, dtype: str) -> int:
    """Bytes each pod sends over the data-center network per step (ring all-reduce)."""
    if pods == 1:
        return 0
    grad_bytes = sum(x.size for x in jax.tree.leaves(params)) * jnp.dtype(dtype).itemsize
    return int(grad_bytes * 2 * (pods - 1) / pods)


def make_train_step(spec: StepSpec, tx: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: TrainState, lr_schedule: Callable) -> Callable:
    """jit(state, tokens [B, L+1]) -> (state, metrics); the state buffer is donated."""
    # Dropout (fine-tuning) is decided here, once: with a rate of 0 no key is made and the
    # step is the same computation as without the option.
    dropout = spec.model.dropout_rate > 0
    model = PaLM(spec.model, deterministic=not dropout)
    P, M = spec.pods, spec.microbatches
    param_shardings = state_shardings.params

    def loss_fn(params, tokens_bxL1, dropout_key=None):
        rngs = {"dropout": dropout_key} if dropout else None
        logits, _ = model.apply({"params": params}, tokens_bxL1[:, :-1], rngs=rngs)
        ce, z = cross_entropy_and_z_loss(logits, tokens_bxL1[:, 1:], spec.model.z_loss)
        return ce + z, (ce, z)

    def pod_gradients(params, tokens_MxbxL1, dropout_keys_M=None):
        """One pod's gradient and losses, accumulated over its microbatches."""

        def micro(acc, xs):
            tokens_bxL1, key = xs if dropout else (xs, None)
            (_, (ce, z)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, tokens_bxL1, key)
            acc_g, acc_ce, acc_z = acc
            return (jax.tree.map(jnp.add, acc_g, g), acc_ce + ce, acc_z + z), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        xs = (tokens_MxbxL1, dropout_keys_M) if dropout else tokens_MxbxL1
        (g, ce, z), _ = jax.lax.scan(micro, (zeros, 0.0, 0.0), xs)
        return jax.tree.map(lambda x: x / M, g), ce / M, z / M

    def per_pod_sharding(s: NamedSharding) -> NamedSharding:
        return NamedSharding(mesh, PartitionSpec("pod", *s.spec))

    def train_step(state: TrainState, tokens_BxL1):
        B, L1 = tokens_BxL1.shape
        # [B] rows of a pod are contiguous data shards; (b, M) keeps each shard inside b.
        tokens = tokens_BxL1.reshape(P, B // (P * M), M, L1).transpose(0, 2, 1, 3)
        tokens = jax.lax.with_sharding_constraint(
            tokens, NamedSharding(mesh, PartitionSpec("pod", None, "data", None))
        )
        # The model's logical activation constraints apply only under a mesh context.
        args, in_axes = (state.params, tokens), (None, 0)
        if dropout:  # restart-safe: the masks depend on the step, never on a carried key
            step_key = jax.random.fold_in(jax.random.key(spec.dropout_seed), state.step)
            args, in_axes = (*args, jax.random.split(step_key, (P, M))), (None, 0, 0)
        with (
            jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
            nn.logical_axis_rules(IN_POD_RULES),
        ):
            grads_P, ce_P, z_P = jax.vmap(pod_gradients, in_axes=in_axes, spmd_axis_name="pod")(
                *args
            )
        grads_P = jax.lax.with_sharding_constraint(
            grads_P, jax.tree.map(per_pod_sharding, param_shardings)
        )
        grads = cross_pod_gradient_exchange(grads_P, spec.cross_pod_dtype, param_shardings)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": ce_P.mean(),
            "z_loss": z_P.mean(),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": lr_schedule(state.step),
            "tokens": jnp.asarray(B * (L1 - 1), jnp.int32),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
