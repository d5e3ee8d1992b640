"""Checkpoints with Orbax over TensorStore, and a RAM tier beside them: async multi-host
saves, rollback retention, atomic commits with a verified manifest, restore onto any mesh
and process count.

The train loop's face is `Checkpoints` (checkpoints.py): when each tier is due, the save,
a preemption's agreed save, the restore of the newest good step of either tier, one result
type (`Restored`). Tools that read one run's persistent checkpoints (`palm eval`, `palm
ckpt`) use the persistent tier's `Checkpointer` alone:

    checkpointer = Checkpointer(config.checkpoint, directory=resolved_dir)
    restored = checkpointer.restore(abstract_state)   # newest complete and verified

`gs://bucket/path` directories are passed unchanged to TensorStore's `gcs` kvstore (through
`etils.epath`, never `pathlib`, which would turn `gs://b` into the local path `gs:/b`).
On GCS, Orbax commits with a `commit_success.txt` marker instead of a rename.
"""

from __future__ import annotations

import importlib

# name -> submodule; imported on first use so `palm ckpt list` does not pay for JAX and Orbax.
_EXPORTS = {
    "Checkpointer": "checkpointer",
    "Checkpoints": "checkpoints",
    "Due": "checkpoints",
    "LOCAL": "checkpoints",
    "PERSISTENT": "checkpoints",
    "Restored": "checkpointer",
    "CheckpointConfig": "config",
    "CheckpointCorrupt": "errors",
    "CheckpointError": "errors",
    "CheckpointNotFound": "errors",
    "CheckpointInfo": "inventory",
    "checkpoint_path": "inventory",
    "list_checkpoints": "inventory",
    "VerifyReport": "verification",
    "verify": "verification",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
