"""The `init_from:` section of a job file: start a new run from another run's checkpoint.

Pure pydantic (no JAX), so that job loading stays cheap; `init_from.py` does the work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
