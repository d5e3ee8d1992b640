"""The `train:`, `optimizer:` and `init_from:` sections of a job file.

Pure pydantic (no JAX), so that job loading stays cheap: the train loop builds the optimizer
from its section (`train/optimizer.py`'s `build_optimizer`, Optax); `train/init_from.py`
does the fine-tuning start.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STRICT = ConfigDict(extra="forbid", frozen=True)


class BatchPhase(BaseModel):
    model_config = STRICT
    sequences: int = Field(ge=1, description="global batch size in sequences")
    until_step: int | None = Field(default=None, ge=1, description="last phase: omit")


class TrainConfig(BaseModel):
    model_config = STRICT
    steps: int = Field(ge=1, description="total optimizer steps")
    seq_len: int | None = Field(
        default=None, ge=2, description="tokens per sequence; default the model's"
    )
    batch_schedule: list[BatchPhase] = Field(
        min_length=1, description="global batch size by step (PaLM 540B: 512 -> 1024 -> 2048)"
    )
    microbatch_sequences: int | None = Field(
        default=None, ge=1, description="sequences per gradient-accumulation microbatch (global)"
    )
    seed: int = Field(default=0, ge=0, description="parameter initialisation seed")
    compile_cache: str | None = Field(
        default=None, description="JAX persistent compilation cache shared by every host and "
        "restart: a local path or gs://bucket/path; default RUN_DIR/NAME/compile-cache; 'off': none"
    )

    @field_validator("batch_schedule")
    @classmethod
    def _phases_in_order(cls, phases: list[BatchPhase]) -> list[BatchPhase]:
        ends = [p.until_step for p in phases]
        if ends[-1] is not None or any(e is None for e in ends[:-1]):
            raise ValueError("every phase but the last needs until_step; the last has none")
        if any(a >= b for a, b in zip(ends[:-2], ends[1:-1], strict=False)):
            raise ValueError(f"until_step values must increase, got {ends[:-1]}")
        return phases

    def batch_size_at(self, step: int) -> int:
        for phase in self.batch_schedule:
            if phase.until_step is None or step < phase.until_step:
                return phase.sequences
        raise AssertionError("unreachable: the last phase has no end")


# Parameter groups `optimizer.frozen` may name: a group matches every parameter whose path
# (e.g. layers/attention/query) has it as a component. `embedding` is the shared input/output
# embedding, `norm` the per-layer LayerNorm scales, `final_norm` the last one.
PARAMETER_GROUPS = ("embedding", "final_norm", "layers", "norm", "attention", "query", "key",
                    "value", "out", "mlp", "gate", "up", "down")


class OptimizerConfig(BaseModel):
    """The `optimizer:` section. PaLM §5 by default: Adafactor without factorisation (Adam with
    parameter scaling); for fine-tuning a constant or linearly decaying schedule, a warm-up and
    frozen parameter groups."""

    model_config = STRICT
    schedule: Literal["palm", "constant", "linear_decay"] = Field(
        default="palm",
        description="palm: peak for constant_steps, then 1/sqrt(step); constant: peak throughout; "
        "linear_decay: peak down to final_learning_rate over decay_steps",
    )
    warmup_steps: int = Field(
        default=0, ge=0, description="linear warm-up from 0 to the peak first; the schedule then "
        "starts after it"
    )
    decay_steps: int | None = Field(
        default=None, ge=1, description="linear_decay: steps from the peak to final_learning_rate"
    )
    final_learning_rate: float = Field(default=0.0, ge=0, description="linear_decay: the end value")
    frozen: list[str] = Field(
        default_factory=list,
        description=f"parameter groups left unchanged (zero updates), e.g. [embedding]; groups: "
        f"{', '.join(PARAMETER_GROUPS)}",
    )

    peak_learning_rate: float = Field(default=1e-2, gt=0, description="lr for the first steps")
    constant_steps: int = Field(
        default=10_000, ge=1, description="lr is constant this long, then 1/sqrt(step)"
    )
    beta1: float = Field(default=0.9, ge=0, lt=1, description="momentum")
    second_moment_exponent: float = Field(
        default=0.8, gt=0, le=1, description="beta2 = 1 - step^-exponent"
    )
    clip_global_norm: float = Field(default=1.0, gt=0, description="gradient global-norm clip")
    clip_update_rms: float = Field(default=1.0, gt=0, description="Adafactor update clipping")
    weight_decay: Literal["lr_squared", "none"] = Field(
        default="lr_squared", description="PaLM: dynamic weight decay lr^2"
    )

    @field_validator("frozen")
    @classmethod
    def _known_groups(cls, frozen: list[str]) -> list[str]:
        unknown = [name for name in frozen if name not in PARAMETER_GROUPS]
        if unknown:
            raise ValueError(
                f"unknown parameter group(s) {unknown}; choose from {list(PARAMETER_GROUPS)}"
            )
        return frozen

    @model_validator(mode="after")
    def _decay_needs_steps(self):
        if self.schedule == "linear_decay" and self.decay_steps is None:
            raise ValueError("schedule linear_decay needs decay_steps (e.g. train.steps minus "
                             "warmup_steps)")
        return self


class InitFromConfig(BaseModel):
    """Fine-tuning: the new run's parameters come from `checkpoint`, the rest starts fresh.

    Fresh means step 0, a new data position, an empty ledger and spike detector, and (with
    `load: params`) a new optimizer state. Once the new run has saved its own checkpoint, a
    restart resumes from that one and never reads `checkpoint` again.
    """

    model_config = STRICT

    checkpoint: str = Field(
        description="the source run's checkpoint directory (local, relative to the job file, "
        "or gs://...): a folder of numbered step folders"
    )
    step: int | None = Field(
        default=None, ge=0, description="step to start from; default the newest complete one"
    )
    load: Literal["params", "params_and_optimizer"] = Field(
        default="params",
        description="params: fresh optimizer state (fine-tuning); params_and_optimizer: the "
        "source's optimizer state too (same optimizer recipe needed; its internal step count, "
        "and so its learning-rate schedule, continues where the source stopped)",
    )
    fallback_to_older: bool = Field(
        default=False,
        description="if the chosen step is damaged, use the newest older complete one that "
        "is intact (default: stop with an error naming the damaged files)",
    )
    new_vocab_rows: Literal["mean", "normal"] | None = Field(
        default=None,
        description="a grown vocabulary (model has more embedding rows than the checkpoint): "
        "initialise the new rows with the mean of the old ones, or N(0, 1) as in pre-training. "
        "Unset: a different row count is an error",
    )
