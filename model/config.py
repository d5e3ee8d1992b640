"""ModelConfig and the paper's presets (PaLM, arXiv 2204.02311, Table 1).

Letters used in shape suffixes throughout the package:
  B batch, L sequence length (queries), T key/value length, D d_model, H query heads,
  Q head size (PaLM: 256 for every model), F d_ff, V vocabulary, N layers.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

RematPolicy = Literal["none", "full", "dots", "minimal"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    d_model: int
    num_layers: int
    num_heads: int
    head_dim: int = 256
    d_ff: int = 0  # 0 means the paper's 4 * d_model
    vocab_size: int = 256_000  # PaLM's SentencePiece vocabulary ("256k tokens")
    # The embedding has rows for a vocabulary rounded up to this multiple, so that it splits
    # evenly over the model-parallel axis (256000 is not divisible by 12); the extra rows are
    # never targets and their logits are masked. Parameter counts use the real vocabulary.
    vocab_pad_multiple: int = 1
    max_seq_len: int = 2048
    rope_base: float = 10_000.0
    layernorm_epsilon: float = 1e-6
    z_loss: float = 1e-4  # PaLM: "z_loss = 10^-4 * log^2 Z"
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    # How tokens pick their embedding rows: a gather, or a one-hot matmul (T5X's choice on
    # TPU). Same values; the TPU compiler cannot partition the gather of a 12-way
    # model-parallel embedding (replica groups of 3), the matmul costs ~0.3% more FLOPs.
    embed_lookup: Literal["gather", "one_hot"] = "gather"
    remat: RematPolicy = "full"  # what the backward pass recomputes; "none" keeps everything
    scan_layers: bool = True  # one compiled layer, looped: compile time independent of depth
    # PaLM: no dropout in pre-training, 0.1 in fine-tuning. Applied only when the model is
    # built with deterministic=False (the train step); 0 leaves the computation unchanged.
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        for name in ("d_model", "num_layers", "num_heads", "head_dim", "d_ff", "vocab_size",
                     "vocab_pad_multiple"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ModelConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    @property
    def attention_width(self) -> int:
        """H * Q: the query projection's width (540B: 48 x 256 = 12288, not d_model)."""
        return self.num_heads * self.head_dim

    def layer_params(self) -> int:
        d, hq, q, f = self.d_model, self.attention_width, self.head_dim, self.d_ff
        attention = d * hq + 2 * d * q + hq * d  # query, one key head, one value head, output
        mlp = 3 * d * f  # SwiGLU: gate and up projections, then down
        layernorm = d  # one LayerNorm (scale only) feeds both attention and MLP
        return attention + mlp + layernorm

    def num_params(self) -> int:
        """All parameters; the embedding is counted once because input and output share it."""
        return self.vocab_size * self.d_model + self.num_layers * self.layer_params() + self.d_model


PALM_8B = ModelConfig(d_model=4096, num_layers=32, num_heads=16)
PALM_62B = ModelConfig(d_model=8192, num_layers=64, num_heads=32)
# 540B ran 12-way model parallel: pad the embedding to 256512 rows (a multiple of 12 x 128).
PALM_540B = ModelConfig(d_model=18432, num_layers=118, num_heads=48, vocab_pad_multiple=1536)

# Small presets keep PaLM's shape rules (parallel block, MQA, SwiGLU, d_ff = 4 D) at sizes a
# CPU can run. `palm-100m` is the benchmark model; the tiny ones are for tests and local jobs.
PALM_100M = ModelConfig(
    d_model=768, num_layers=8, num_heads=6, head_dim=128, vocab_size=32_000, max_seq_len=512
)
PALM_TINY = ModelConfig(
    d_model=128, num_layers=2, num_heads=4, head_dim=32, vocab_size=1024, max_seq_len=128
)
PALM_TEST = ModelConfig(
    d_model=32, num_layers=2, num_heads=2, head_dim=16, vocab_size=64, max_seq_len=32,
    compute_dtype="float32", remat="none",
)

PRESETS: dict[str, ModelConfig] = {
    "palm-8b": PALM_8B,
    "palm-62b": PALM_62B,
    "palm-540b": PALM_540B,
    "palm-100m": PALM_100M,
    "palm-tiny": PALM_TINY,
    "palm-test": PALM_TEST,
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset by name, with field overrides (e.g. a job file's `model.overrides`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
