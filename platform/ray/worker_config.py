"""What `palm run`'s driver hands each train worker: a typed config, checked on both sides.

It crosses Ray as plain JSON (`model_dump`), so a worker on another machine needs nothing
of the driver's but this package; `train_worker` validates it back into this model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: dict = Field(description="the Job, as JSON (Job.model_dump(mode='json'))")
    run_dir: str = Field(description="the run folder, absolute")
    launched_at: float | None = Field(
        default=None, description="unix time `palm run` started: goodput counts from here, "
        "and it tells a restart (same launch) from a resume (a new launch)")
    stop_key: str | None = Field(
        default=None, description="the GCS key of Ctrl-C's stop request (ray/interrupt.py)")
