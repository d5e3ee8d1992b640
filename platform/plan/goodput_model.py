"""The goodput model behind `palm plan --goodput`: what fraction of a pod job's chip-time
trains, how often to checkpoint to each tier, and what a failure costs; before it runs.

Pure arithmetic over named inputs (no JAX): the step time comes from the plan's compiled
schedule, the bytes from its shardings, the restart constants from measurements on the local
cluster and the failure rates from published figures (`goodput_inputs.py`); checked against
finished local runs by `goodput_check.py`.

Expected goodput, per day of wall time D (first order: a failure during a recovery is not
modelled, and failures arrive as a Poisson process):
- unexpected failures N_u = lambda_u * D: each pays the restart (with warm hosts, a failure
  on a live host restarts only the JAX processes: a shorter restart for that share), the
  restore of the tier it
  reads (the RAM tier when a replica survives, else the persistent tier) and the steps since
  that tier's last save (half an interval on average);
- preemption notices N_p = lambda_p * D: each saves at the agreed step (one blocking save),
  restarts and restores from RAM; nothing is recomputed;
- start-up (the first init and compile) once per job, spread over the job's days;
- the slice's unavailability (infrastructure outside the platform) as a fixed fraction;
- the rest runs steps and blocking saves: per step sum_t save_s_t / interval_t seconds.
Goodput = productive seconds / D.

The recommended interval of a tier is Young's and Daly's T = sqrt(2 * delta * M) (Young 1974,
"A first order approximation to the optimum checkpoint interval"; Daly 2006, FGCS 22(3)),
with delta the tier's blocking save and M the mean time between the failures that restore
from that tier, and never shorter than the tier's background write (a save cannot start
before the previous one is on storage).
"""

from __future__ import annotations

import dataclasses
import math
import random
from statistics import median

DAY_S = 86_400.0


@dataclasses.dataclass(frozen=True)
class Tier:
    """One checkpoint tier: blocking save seconds, background write seconds, restore seconds."""

    name: str  # "local" (host RAM) or "persistent" (gs://)
    save_s: float  # the step waits this long (device-to-host copy)
    write_s: float  # then the write runs in the background this long
    restore_s: float  # a restarted host reads its shards back in this long
    interval_steps: int  # the job's own cadence


@dataclasses.dataclass(frozen=True)
class Inputs:
    step_s: float
    restart_s: float  # one failure: init + program start-up + infrastructure recovery
    startup_s: float  # once per job: first init + first compile
    job_steps: int  # train.steps: spreads the start-up over the job's length
    tiers: tuple[Tier, ...]  # persistent first; the local tier when the job has one
    unexpected_per_s: float  # the whole job's rate of unexpected interruptions
    preempt_per_s: float  # the whole job's rate of preemption / maintenance notices
    p_ram_lost: float  # chance that no RAM copy survives an unexpected failure
    unavailable: float = 0.0  # fraction of wall time the slice cannot run at all
    # With warm hosts (faults.warm_hosts): the share of unexpected failures that leave every
    # host reachable (a crashed or hung process), which restart the JAX processes in place in
    # `warm_restart_s`; the others lose a host and restart the worker group (`restart_s`).
    warm_restart_s: float | None = None
    p_live_host: float = 0.0

    def unexpected_restart_s(self, warm: bool) -> float:
        """One unexpected failure's restart: warm (`warm`, a live host) or the group's."""
        return self.warm_restart_s if warm and self.warm_restart_s is not None else (
            self.restart_s)

    @property
    def mean_unexpected_restart_s(self) -> float:
        if self.warm_restart_s is None:
            return self.restart_s
        return (self.p_live_host * self.warm_restart_s
                + (1.0 - self.p_live_host) * self.restart_s)

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)


@dataclasses.dataclass(frozen=True)
class Expectation:
    goodput: float
    lost_s_per_day: dict[str, float]  # saves, restarts, restores, recomputation, start-up


def save_fraction(inputs: Inputs, intervals: dict[str, int]) -> float:
    """Blocking save seconds per productive step second."""
    return sum(t.save_s / (intervals[t.name] * inputs.step_s) for t in inputs.tiers)


def _restore_odds(inputs: Inputs) -> list[tuple[float, Tier]]:
    """(probability, tier) an unexpected failure restores from."""
    local, persistent = inputs.tier("local"), inputs.tier("persistent")
    if local is None:
        return [(1.0, persistent)]
    return [(1.0 - inputs.p_ram_lost, local), (inputs.p_ram_lost, persistent)]


def expected(inputs: Inputs, intervals: dict[str, int]) -> Expectation:
    """Expected goodput and lost seconds per day by cause at these tier intervals (steps)."""
    per_step = inputs.step_s * (1.0 + save_fraction(inputs, intervals))
    n_u, n_p = inputs.unexpected_per_s * DAY_S, inputs.preempt_per_s * DAY_S
    odds = _restore_odds(inputs)
    first = inputs.tier("local") or inputs.tier("persistent")
    restore = n_u * sum(p * t.restore_s for p, t in odds) + n_p * first.restore_s
    recompute = n_u * sum(p * per_step * intervals[t.name] / 2.0 for p, t in odds)
    notice_saves = n_p * first.save_s
    restarts = n_u * inputs.mean_unexpected_restart_s + n_p * inputs.restart_s
    job_days = max(inputs.job_steps * per_step / DAY_S, 1e-9)
    startup = min(inputs.startup_s / job_days, DAY_S)
    infrastructure = inputs.unavailable * DAY_S
    running = max(DAY_S - restarts - restore - recompute - notice_saves - startup
                  - infrastructure, 0.0)
    productive = running * inputs.step_s / per_step
    lost = {
        "saves": running - productive + notice_saves,
        "restarts": restarts,
        "restores": restore,
        "recomputation": recompute,
        "start-up": startup,
        "infrastructure": infrastructure,
    }
    return Expectation(goodput=productive / DAY_S, lost_s_per_day=lost)


def young_daly_s(save_s: float, mtbf_s: float) -> float:
    """Young's optimum interval sqrt(2 * delta * M), in seconds."""
    return math.sqrt(2.0 * save_s * mtbf_s)


def recommended(inputs: Inputs) -> dict[str, int]:
    """Each tier's Young/Daly interval in steps, over the failures that restore from it."""
    rates = {t.name: p * inputs.unexpected_per_s for p, t in _restore_odds(inputs)}
    out = {}
    for tier in inputs.tiers:
        rate = rates.get(tier.name, 0.0)
        mtbf = 1.0 / rate if rate > 0 else math.inf
        seconds = young_daly_s(max(tier.save_s, 1e-6), mtbf)
        floor = math.ceil(tier.write_s / inputs.step_s)
        steps = inputs.job_steps if math.isinf(seconds) else round(seconds / inputs.step_s)
        out[tier.name] = max(1, floor, min(steps, max(inputs.job_steps, 1)))
    return out


def simulate(inputs: Inputs, intervals: dict[str, int], days: int, seed: int = 0) -> list[float]:
    """Goodput of each of `days` independent days, failures drawn at the stated rates.

    Between failures the job advances at `per_step` seconds a step (saves included); an
    unexpected failure rolls back to its restore tier's last save, a notice to the step it
    saved at. Productive time is new steps beyond the day's high-water mark.
    """
    rng = random.Random(seed)
    per_step = inputs.step_s * (1.0 + save_fraction(inputs, intervals))
    odds = _restore_odds(inputs)
    first = inputs.tier("local") or inputs.tier("persistent")
    rate = inputs.unexpected_per_s + inputs.preempt_per_s
    startup = min(inputs.startup_s / max(inputs.job_steps * per_step / DAY_S, 1e-9), DAY_S)
    out = []
    for _ in range(days):
        step = high = rng.randrange(0, max(intervals.values()) * 8 + 1)  # a random phase
        start, clock = high, startup + inputs.unavailable * DAY_S
        while clock < DAY_S:
            gap = rng.expovariate(rate) if rate > 0 else math.inf
            run = min(gap, DAY_S - clock)
            step += int(run / per_step)
            high = max(high, step)
            clock += run
            if clock >= DAY_S:
                break
            if rng.random() < inputs.preempt_per_s / rate:
                clock += first.save_s + inputs.restart_s + first.restore_s
                continue
            u, tier = rng.random(), odds[-1][1]
            for p, t in odds:
                if u < p:
                    tier = t
                    break
                u -= p
            step -= step % intervals[tier.name]
            warm = inputs.warm_restart_s is not None and rng.random() < inputs.p_live_host
            clock += inputs.unexpected_restart_s(warm) + tier.restore_s
        out.append(min((high - start) * inputs.step_s / DAY_S, 1.0))
    return out


def percentiles(values: list[float]) -> tuple[float, float]:
    """(10th percentile, median)."""
    ordered = sorted(values)
    return ordered[int(0.1 * (len(ordered) - 1))], median(ordered)
