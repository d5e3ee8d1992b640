"""What one checkpoint holds: three Orbax items in one step directory.

state/   the train state pytree (params, optimizer state, step, RNG key data) in OCDBT
         over zarr3 TensorStore arrays; each process writes only the shards it owns
         (replica 0 of each) into `state/ocdbt.process_<i>/`, merged on commit
data/    the data iterator state (JSON)
ledger/  the platform's ledger: rollbacks and skipped ranges (JSON)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

STATE, DATA, LEDGER = "state", "data", "ledger"
ITEM_NAMES = (STATE, DATA, LEDGER)


# Orbax's "replica-parallel" save splits every replicated shard (our parameters are
# replicated over `pod`) into one slice per replica, so each pod writes half. The slicing
# is one device op per array per replica, run while the loop waits: 70 ms of a 100 ms save
# for palm-tiny's 55 arrays. Below this many bytes per slice a replica writes the whole
# shard instead; the large arrays of real models still get split.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 << 20


def _type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
    """Orbax 0.12.8's default handlers, the jax.Array one with our replica-parallel floor."""
    # Private in orbax 0.12.8 (through its door): the default ArrayHandler keeps per-array
    # metadata in this store, and checkpoints must stay in that format.
    from palm_platform.compat.orbax import array_metadata_store

    th = ocp.type_handlers
    array = th.ArrayHandler(array_metadata_store=array_metadata_store(),
                            min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)
    return th.create_type_handler_registry(
        (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
        (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()), (jax.Array, array),
        (str, th.StringHandler()),  # (Orbax's placeholder handler: partial restores; unused)
    )


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True,
                                                type_handler_registry=_type_handlers())
    registry.add(STATE, ocp.args.PyTreeSave, state_handler)
    registry.add(STATE, ocp.args.PyTreeRestore, state_handler)
    for name in (DATA, LEDGER):
        json_handler = ocp.JsonCheckpointHandler()
        registry.add(name, ocp.args.JsonSave, json_handler)
        registry.add(name, ocp.args.JsonRestore, json_handler)
    return registry


def save_args(train_state: Any, data_state: dict, ledger: dict) -> ocp.args.Composite:
    return ocp.args.Composite(
        **{
            STATE: ocp.args.PyTreeSave(train_state),
            DATA: ocp.args.JsonSave(data_state),
            LEDGER: ocp.args.JsonSave(ledger),
        }
    )


def restore_args(abstract_train_state: Any) -> ocp.args.Composite:
    """Restore onto the shardings of `abstract_train_state`, whatever mesh saved it."""
    return ocp.args.Composite(
        **{
            STATE: ocp.args.PyTreeRestore(
                item=abstract_train_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_train_state),
            ),
            DATA: ocp.args.JsonRestore(),
            LEDGER: ocp.args.JsonRestore(),
        }
    )


def single_device_abstract_state(step_dir) -> Any:
    """The saved tree as ShapeDtypeStructs on this process's first device (for read-back)."""
    metadata = ocp.PyTreeCheckpointer().metadata(step_dir / STATE).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata.tree
    )
