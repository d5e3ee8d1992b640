"""Training data: SentencePiece tokenizer, sources, mixture, packing, per-host batches.

pipeline = build_pipeline(data_config, seq_len=2048, base_dir=job_dir,
                          process_index=jax.process_index(),
                          process_count=jax.process_count())
local = pipeline.local_batch(global_batch_size)      # int32 [B / processes, L + 1]
batch = to_global_array(local, batch_sharding(mesh))
checkpoint_extra["data"] = pipeline.get_state()       # pipeline.set_state(...) on resume
"""

from palm_platform.data.config import PALM_MIXTURE, DataConfig, SourceConfig, palm_mixture_sources
from palm_platform.data.pipeline import DataConfigError, Pipeline, build_pipeline
from palm_platform.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "PALM_MIXTURE",
    "DataConfig",
    "DataConfigError",
    "Pipeline",
    "SourceConfig",
    "Tokenizer",
    "batch_sharding",
    "build_pipeline",
    "load_tokenizer",
    "palm_mixture_sources",
    "to_global_array",
    "train_tokenizer",
]


def __getattr__(name: str):
    # JAX is imported only by those who need the global array (not by `palm tokenizer`).
    if name in ("to_global_array", "batch_sharding"):
        from palm_platform.data import global_array

        return getattr(global_array, name)
    raise AttributeError(name)
