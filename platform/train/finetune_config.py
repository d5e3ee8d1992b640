"""The `init_from:` section of a job file: start a new run from another run's checkpoint.

Pure pydantic (no JAX), so that job loading stays cheap; `init_from.py` does the work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class InitFromConfig(BaseModel):
    """Fine-tuning: the new run's parameters come from `checkpoint`, the rest starts fresh.

    Fresh means step 0, a new data position, an empty ledger and spike detector, and (with
    `load: params`) a new optimizer state. Once the new run has saved its own checkpoint, a
    restart resumes from that one and never reads `checkpoint` again.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

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


# Parameter groups `optimizer.frozen` may name: a group matches every parameter whose path
# (e.g. layers/attention/query) has it as a component. `embedding` is the shared input/output
# embedding, `norm` the per-layer LayerNorm scales, `final_norm` the last one.
PARAMETER_GROUPS = ("embedding", "final_norm", "layers", "norm", "attention", "query", "key",
                    "value", "out", "mlp", "gate", "up", "down")


class FineTuneOptimizerFields(BaseModel):
    """Learning-rate schedule, warm-up and frozen parameters: the fine-tuning knobs of the
    `optimizer:` section (defaults: PaLM's pre-training schedule, nothing frozen)."""

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

    @field_validator("frozen")
    @classmethod
    def _known_groups(cls, frozen: list[str]) -> list[str]:
        unknown = [name for name in frozen if name not in PARAMETER_GROUPS]
        if unknown:
            raise ValueError(f"unknown parameter group(s) {unknown}; choose from {list(PARAMETER_GROUPS)}")
        return frozen

    @model_validator(mode="after")
    def _decay_needs_steps(self):
        if self.schedule == "linear_decay" and self.decay_steps is None:
            raise ValueError("schedule linear_decay needs decay_steps (e.g. train.steps minus "
                             "warmup_steps)")
        return self
