"""Training data: SentencePiece tokenizer, sources, mixture, packing, per-host batches.

pipeline = build_pipeline(data_config, seq_len=2048, base_dir=job_dir,
                          process_index=jax.process_index(),
                          process_count=jax.process_count())
pipeline.read_blocks(*process_blocks(batch_sharding(mesh)))  # this host's batch blocks
local = pipeline.local_batch(global_batch_size)      # int32 [its blocks' rows, L + 1]
batch = to_global_array(local, batch_sharding(mesh))
checkpoint_extra["data"] = pipeline.get_state()       # pipeline.set_state(...) on resume
"""

from __future__ import annotations

import importlib

# name -> submodule, imported on first use: loading a job file (which needs only the config)
# must not pay for Grain, JAX and Orbax (5 s and 200 MB on 2 cores).
_EXPORTS = {
    "PALM_MIXTURE": "config",
    "DataConfig": "config",
    "SourceConfig": "config",
    "palm_mixture_sources": "config",
    "DataConfigError": "pipeline",
    "Pipeline": "pipeline",
    "build_pipeline": "pipeline",
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "to_global_array": "global_array",
    "process_blocks": "global_array",
    "batch_sharding": "global_array",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
