"""The `faults:` section of a job file: restarts, hang limits, the spike remedy, injected faults.

Pure pydantic (no NumPy, no JAX), so that job loading stays cheap. `spike.py` and
`rollback.py` read `SpikeConfig`, `faults.py` reads `FaultInjection`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STRICT = ConfigDict(extra="forbid", frozen=True)


class SpikeConfig(BaseModel):
    """Loss-spike detection and the rollback + data-skip remedy (PaLM §5.1).

    Rules (see `palm_platform.supervise.spike`): "zscore" flags loss > median + zscore x
    robust std (1.4826 x MAD) of the last `window` good losses; "ratio" flags loss >
    threshold x median. NaN or Inf is always a spike. Recurrence: a spike within
    `recurrence_steps` of an earlier rolled-back spike widens the skip (x2 per earlier
    one) or stops the run (`on_recurrence`); `max_rollbacks` such rollbacks, then stop.
    """

    model_config = STRICT
    rule: Literal["zscore", "ratio"] = Field(
        default="zscore",
        description="zscore: loss > median + zscore x robust std; ratio: loss > threshold x median",
    )
    window: int = Field(default=100, ge=5, description="steps of loss history the rule looks at")
    min_history: int = Field(
        default=10, ge=2, description="good losses needed before a verdict (NaN/Inf: always)"
    )
    threshold: float = Field(default=3.0, gt=1, description="rule ratio: loss > threshold x median")
    zscore: float = Field(
        default=6.0, gt=0, description="rule zscore: loss > median + zscore x robust std (MAD)"
    )
    rollback_steps: int = Field(default=100, ge=0, description="restore at least this far back")
    skip_batches: int = Field(default=300, ge=1, description="batches skipped from the spike on")
    recurrence_steps: int = Field(
        default=500,
        ge=0,
        description="a spike within this many steps of an earlier rolled-back spike recurs",
    )
    on_recurrence: Literal["widen", "stop"] = Field(
        default="widen",
        description="widen: skip x2 per earlier nearby rollback; stop: stop the run with a report",
    )
    max_rollbacks: int = Field(
        default=5,
        ge=0,
        description="rollbacks for spikes within recurrence_steps of each other; one more stops "
        "the run with a report (0: stop at the first spike)",
    )

    @model_validator(mode="after")
    def _history_fits_window(self) -> SpikeConfig:
        if self.min_history > self.window:
            raise ValueError(
                f"min_history={self.min_history} exceeds window={self.window}, so no verdict "
                f"could ever be reached; set min_history <= {self.window}"
            )
        return self


class FaultInjection(BaseModel):
    """One fault to inject; each fires at most once per run, restarts included."""

    model_config = STRICT
    kind: Literal["kill_host", "crash_process", "hang_host", "poison_batches",
                  "damage_checkpoint", "preempt"] = (
        Field(description="kill_host: the host is lost (its agent and JAX process are "
              "SIGKILLed, its RAM checkpoints deleted); crash_process: only its JAX process "
              "is SIGKILLed, the host stays; hang_host: block it forever; "
              "poison_batches: replace the data of `steps` batches from `step` with random "
              "tokens; damage_checkpoint: truncate a file of the newest checkpoint; preempt: "
              "SIGTERM the worker (a preemption notice: every host saves one agreed step)"))
    step: int = Field(ge=0, description="fires at the first step >= this one that the run reaches")
    host: int = Field(
        default=0, ge=0, description="global host (worker) index that acts (poison: every host)"
    )
    steps: int = Field(default=1, ge=1, description="poison_batches: how many batches (steps)")


class FaultsConfig(BaseModel):
    model_config = STRICT
    max_restarts: int = Field(default=3, ge=0, description="worker-group restarts before failing")
    hang_timeout_s: float = Field(default=300, gt=0, description="no step for this long = hang")
    init_timeout_s: float = Field(default=300, gt=0, description="jax.distributed start-up limit")
    warm_hosts: bool = Field(
        default=True, description="a crashed or hung JAX process on a live host restarts the "
        "JAX processes only, in the hosts' agents (ray/host_agent.py), not the worker group; "
        "false: every failure restarts the worker group (jobs of more than one host, on Ray)")
    spike: SpikeConfig = Field(default_factory=SpikeConfig)
    inject: list[FaultInjection] = Field(default_factory=list, description="faults to inject")
