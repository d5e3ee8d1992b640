"""The train state (parameters, optimizer state, step) and its shardings on a mesh."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from palm.config import ModelConfig
from palm.model import PaLM
from palm_platform.mesh import logical_sharding


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any


def _init_params(model_cfg: ModelConfig, rng):
    return PaLM(model_cfg).init(rng, jnp.zeros((1, 8), jnp.int32))["params"]


def _init_boxed_and_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, rng):
    """(the parameters still in their logical-axis boxes, the TrainState): one trace of the
    model's init serves both the shardings and the state's shapes."""
    boxed = _init_params(model_cfg, rng)
    params = nn.meta.unbox(boxed)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    return boxed, state


def _init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, rng) -> TrainState:
    return _init_boxed_and_state(model_cfg, tx, rng)[1]


def _dict_keys(path) -> tuple[str, ...]:
    """The trailing dict keys of a key path: the parameter path inside an optimizer state."""
    keys = []
    for key in reversed(path):
        if not isinstance(key, jax.tree_util.DictKey):
            break
        keys.append(str(key.key))
    return tuple(reversed(keys))


def state_shardings(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh):
    """(abstract TrainState whose leaves carry their shardings, the NamedSharding pytree).

    Parameters are sharded by their logical names; optimizer-state leaves that mirror a
    parameter with its shape (Adam moments) take that parameter's sharding; the rest (step
    counts, the [1]-shaped placeholders of Adafactor's unused factored slots) are replicated.
    """
    # One abstract trace of the init (it was two: a second of every (re)start on palm-tiny).
    boxed, abstract = jax.eval_shape(lambda rng: _init_boxed_and_state(model_cfg, tx, rng),
                                     jax.random.key(0))
    param_shardings = logical_sharding(mesh, nn.get_partition_spec(boxed))
    whole = NamedSharding(mesh, PartitionSpec())
    # Matched by path rather than with optax.tree_map_params, which cannot follow the masked
    # states of optax.multi_transform (frozen parameter groups): a leaf whose path ends in a
    # parameter's path (.../mu/layers/mlp/gate) and has its shape is sharded like it.
    by_path = {
        _dict_keys(path): (param.shape, sharding)
        for (path, param), sharding in zip(
            jax.tree_util.tree_leaves_with_path(abstract.params), jax.tree.leaves(param_shardings),
            strict=True)
    }

    def opt_sharding(path, leaf):
        shape, sharding = by_path.get(_dict_keys(path), (None, whole))
        return sharding if leaf.shape == shape else whole

    opt_shardings = jax.tree_util.tree_map_with_path(opt_sharding, abstract.opt_state)
    shardings = TrainState(step=whole, params=param_shardings, opt_state=opt_shardings)
    with_shardings = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return with_shardings, shardings


def init_train_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                     seed: int, shardings: TrainState | None = None) -> TrainState:
    """Parameters initialised directly into their shards (never whole on one device).
    `shardings`: `state_shardings(...)[1]` when the caller has it (saves tracing it again)."""
    if shardings is None:
        _, shardings = state_shardings(model_cfg, tx, mesh)
    init = jax.jit(lambda rng: _init_state(model_cfg, tx, rng), out_shardings=shardings)
    return init(jax.random.key(seed))
