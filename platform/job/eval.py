"""The `eval:` section of a job file: held-out loss and bits-per-byte during training.

Without an `eval:` section nothing is held out and the run trains exactly as before.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    every_steps: int = Field(ge=1, description="evaluate every this many steps (and at the end)")
    heldout_fraction: float = Field(
        default=0.02, gt=0, lt=0.5,
        description="fraction of each source's documents held out (never trained on); at "
        "least one document of any source with two or more",
    )
    sequences: int = Field(
        default=64, ge=1, description="held-out sequences evaluated per source each time (at most)"
    )
    batch_sequences: int | None = Field(
        default=None, ge=1,
        description="global eval batch in sequences (a multiple of pods x data); default the "
        "first phase of train.batch_schedule",
    )
    split_seed: int = Field(default=0, ge=0, description="seed of the held-out document choice")
