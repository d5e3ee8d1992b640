"""The `profile:` section of a job file: trace fixed steps, and how often a live request is read.

    profile:
      at_steps: [30]        # trace from these steps (each a capture of `steps` steps)
      steps: 5
      hosts: all            # or [0, 2]
      poll_every: 10        # host 0 reads live requests (`palm profile`) every 10 steps

Without the section nothing is traced; live requests are still read at `poll_every`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ProfileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    at_steps: list[int] = Field(default_factory=list,
                                description="first step of each capture (steps count from 1)")
    steps: int = Field(default=5, ge=1, le=100, description="steps traced per capture")
    hosts: Literal["all"] | list[int] = Field(
        default="all", description="hosts (process indices) that trace: all, or a list")
    poll_every: int = Field(
        default=10, ge=1, description="steps between host 0's reads of a live `palm profile` "
        "request (each read is broadcast to every host: one small collective)")

    def host_list(self, host_count: int) -> list[int]:
        return list(range(host_count)) if self.hosts == "all" else sorted(set(self.hosts))
