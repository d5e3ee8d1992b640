"""The (pod, data, model) mesh and the one table that maps logical axis names onto it.

- `model`: tensor parallelism inside a pod (PaLM 540B: 12-way).
- `data`: data parallelism inside a pod; parameters and optimizer state are also fully
  sharded over it (PaLM's "2D finalized" layout: a [embed, mlp] kernel is [data, model],
  the [vocab, embed] embedding is [model, data]).
- `pod`: data parallelism across pods over the data-center network. Parameters are
  replicated over it; the only traffic on it is the gradient exchange in train/step.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("pod", "data", "model")

# Priority-ordered (logical name, mesh axes). Flax assigns a mesh axis to the first
# dimension that claims it, so in an activation [batch, length, embed] the batch takes
# `data` and `embed` stays replicated, while in a parameter [embed, mlp] `embed` gets it.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("pod", "data")),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("embed", "data"),
    # Activations: once `batch` holds `data`, the residual stream [batch, length, embed] is
    # split over `model` instead of being replicated 12 ways (540B: 3 GB, not 36 GB, of
    # per-layer checkpoints per chip).
    ("embed", "model"),
    ("length", None),
    ("kv", None),
    ("layers", None),
)

# Inside the per-pod computation (vmapped over `pod` in train/step.py) a batch is one pod's.
IN_POD_RULES = tuple(
    (name, "data" if name == "batch" else axes) for name, axes in LOGICAL_AXIS_RULES
)


def make_mesh(
    pods: int, data: int, model: int, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (pod, data, model) mesh over `devices` (default: every device of every process).

    Devices are grouped by pod first: on TPU, by `slice_index` (one slice per pod, a hybrid
    ICI/DCN mesh); elsewhere (CPU processes posing as hosts) by process index, pod p owning
    processes [p * hosts_per_pod, (p + 1) * hosts_per_pod).
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != pods * data * model:
        raise ValueError(
            f"mesh pod={pods} x data={data} x model={model} needs {pods * data * model} "
            f"devices, found {len(devices)}"
        )
    if devices[0].platform == "tpu" and pods > 1 and hasattr(devices[0], "slice_index"):
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_hybrid_device_mesh(
            (1, data, model), (pods, 1, 1), devices=devices, allow_split_physical_axes=True
        )
    elif devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh((pods, data, model), devices=devices,
                                             allow_split_physical_axes=True)
    else:
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        grid = np.array(ordered, dtype=object).reshape(pods, data, model)
    return Mesh(grid, MESH_AXES)


def logical_sharding(mesh: Mesh, logical_specs, rules=LOGICAL_AXIS_RULES):
    """Logical PartitionSpecs (a pytree) -> NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Token batches [B, L]: B split over pods and over data inside a pod."""
    return NamedSharding(mesh, PartitionSpec(("pod", "data"), None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
