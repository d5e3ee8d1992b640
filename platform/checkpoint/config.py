"""The `checkpoint:` section of a job file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LocalTierConfig(BaseModel):
    """`checkpoint.local`: the RAM tier, saved every few steps into host memory (/dev/shm).

    Off unless the job has this section, as in MaxText (`enable_emergency_checkpoint`
    defaults to False) and Orbax (the emergency manager is a separate, opt-in class): each
    host then keeps two steps of its shards, plus its ring neighbour's on 1-pod jobs, in
    RAM that the data pipeline and XLA would otherwise use; a job says it can spare it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: str | None = Field(
        default=None,
        description="a folder in host RAM; each host writes its own sub-folder (None: "
        "/dev/shm/palm/<job name>)",
    )
    every_steps: int = Field(
        default=10, ge=1, description="RAM-tier save cadence in train steps (a step that is "
        "a multiple of it is saved)",
    )


class CheckpointConfig(BaseModel):
    """Where, how often and how many checkpoints a run keeps.

    Retention keeps the union of three sets (see `retention.py`): the newest `keep_last`,
    every checkpoint needed to roll back at least `rollback_steps` from the newest one,
    and every step that is a multiple of `keep_every`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: str = Field(
        description="checkpoint root: a local path or gs://bucket/path (relative paths are "
        "resolved by the job loader against the job file's folder)",
    )
    every_steps: int = Field(
        default=100,
        ge=1,
        description="persistent save cadence in train steps (a step that is a multiple "
        "of it is saved, and the run's last step)",
    )
    keep_last: int = Field(default=3, ge=1, description="number of newest checkpoints kept")
    rollback_steps: int = Field(
        default=100,
        ge=0,
        description="train steps a loss-spike rollback must be able to go "
        "back from the newest checkpoint; older checkpoints are kept until one lies at least "
        "this many steps behind it (in a job file: set from faults.spike.rollback_steps)",
    )
    keep_every: int | None = Field(
        default=None,
        ge=1,
        description="steps that are multiples of this are kept forever (None: none are)",
    )
    local: LocalTierConfig | None = Field(
        default=None,
        description="the RAM checkpoint tier (off without this section); `every_steps` "
        "above stays the persistent tier's cadence",
    )
    async_save: bool = Field(
        default=True,
        description="write in the background: `save` returns once the arrays "
        "are copied off the devices",
    )
    manifest_checksums: bool = Field(
        default=True,
        description="process 0 records a CRC32 of every file of a finalised "
        "checkpoint (reads the checkpoint back once); False records sizes only",
    )
    verify_checksums_on_restore: bool = Field(
        default=False,
        description="restore checks CRC32s as well as file sizes before "
        "reading a checkpoint (reads it twice; sizes alone catch truncated and deleted files)",
    )

    @model_validator(mode="after")
    def _keep_every_is_a_multiple_of_cadence(self) -> CheckpointConfig:
        if self.keep_every is not None and self.keep_every % self.every_steps:
            raise ValueError(
                f"keep_every={self.keep_every} is not a multiple of every_steps="
                f"{self.every_steps}, so no regularly saved step would be kept forever. "
                f"Fix: set keep_every to a multiple of {self.every_steps}"
            )
        return self
