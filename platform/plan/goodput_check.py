"""Validate the goodput model on a finished local run: predict its goodput from measured
components and its injected faults, and set the prediction beside what the run measured.

    figures = run_figures(read_records(run_dir))
    prediction = predict(job, figures, restart_s=restart_constant_s(hosts))  # or the run's
    prediction.goodput, figures.goodput

What is taken from the run (inputs the model does not predict): the productive seconds of a
step (the goodput tracker's, over the steps that count), the start-up (the first process's
start to its first step, plus the compiles of new batch shapes), each tier's mean blocking
save, and the seconds the model has no term for (waiting for data, held-out evals, "other").
What the model predicts: the saves' total from the tiers' cadences, and for each injected
fault the step it resumes from and so the steps computed again, plus the restarts' seconds
(`restart_s`: the measured constants of `goodput_inputs.MEASURED` scaled to the job's hosts,
as `palm plan --goodput` uses them, or a run's own mean). The fault rules are the
platform's:
- kill_host / hang_host at step s (s completed): the group restarts from the newest save
  below s of the RAM tier when the job has one (the save of step s itself is still being
  written when the host dies), else of the persistent tier, skipping a checkpoint a
  damage_checkpoint fault truncated; a hang first waits out `faults.hang_timeout_s`;
- poison_batches at step s: the loss spikes at s and every host rolls back in place (no
  restart) to the newest persistent save at least `spike.rollback_steps` before s, a restore
  of `restore_s`.
"""

from __future__ import annotations

import dataclasses
from statistics import mean

from palm_platform.plan import goodput_inputs as gi

UNMODELLED = ("data", "other", "eval")  # badput causes the model has no term for


@dataclasses.dataclass(frozen=True)
class RunFigures:
    """What one finished run measured (its metrics.jsonl)."""

    steps: int
    step_s: float  # productive seconds per step (the steps that count, none recomputed)
    startup_s: float  # first process start to its first step, + the compiles of new shapes
    save_s: dict[str, float]  # tier -> mean blocking seconds of one save
    unmodelled_s: float  # data waits, evals, other
    restart_s: list[float]  # each restart's recovery (the `restart` records)
    goodput: float


def run_figures(records: list[dict]) -> RunFigures:
    """The figures of a run that finished (its `goodput` event is written at the end)."""
    goodput = [r for r in records if r["kind"] == "goodput"]
    if not goodput:
        raise ValueError("the run has no goodput event: it did not finish")
    g = goodput[-1]
    steps = [r for r in records if r["kind"] == "step"]
    trained = g["step"]  # the last step: the run finished there
    step_s = g["productive_s"] / trained
    started = g["time"] - g["wall_s"]  # the first process's tracker started here
    saves: dict[str, list[float]] = {}
    new_shapes, fresh = 0.0, False  # an attempt's first compile: its start-up or restart's
    for r in records:
        if r["kind"] == "checkpoint_saved":
            saves.setdefault(r.get("tier", "persistent"), []).append(r["blocked_s"])
        elif r["kind"] == "startup":
            fresh = True
        elif r["kind"] == "compiled":
            new_shapes += 0.0 if fresh else r["seconds"]
            fresh = False
    return RunFigures(
        steps=trained, step_s=step_s, startup_s=steps[0]["time"] - started - step_s + new_shapes,
        save_s={tier: mean(seconds) for tier, seconds in saves.items()},
        unmodelled_s=sum(g.get(f"badput_{cause}_s", 0.0) for cause in UNMODELLED),
        restart_s=[r["recovery_s"] for r in records if r["kind"] == "restart"
                   and "recovery_s" in r],
        goodput=g["goodput"],
    )


def restart_constant_s(hosts: int, constants: gi.RestartConstants = gi.MEASURED) -> float:
    """One restart of a local job of `hosts` hosts by the measured constants, the restore
    included, initialization scaled as `palm plan --goodput` scales it (`initialization_at`)."""
    return (constants.infrastructure_recovery_s + gi.initialization_at(hosts, constants)
            + constants.checkpoint_restore_s + constants.program_startup_s
            + constants.data_loading_s)


@dataclasses.dataclass(frozen=True)
class Prediction:
    goodput: float
    resumes: list[tuple[str, int, int]]  # (fault kind, its step, the step it resumes from)
    recomputed_steps: int
    lost_s: dict[str, float]  # by cause


def _newest(step: int, every: int, damaged: set[int]) -> int:
    """The newest multiple of `every` at or below `step` that is not damaged (0: the start)."""
    found = step - step % every
    while found > 0 and found in damaged:
        found -= every
    return max(found, 0)


def predict(job, figures: RunFigures, *, restart_s: float,
            restore_s: float = gi.MEASURED.checkpoint_restore_s) -> Prediction:
    """The run's goodput by the model's accounting, from `figures`' inputs and `job`'s faults
    (`restart_s`: the seconds of one restart, restore included; `restore_s`: a rollback's)."""
    persistent = job.checkpoint.every_steps
    local = job.checkpoint.local.every_steps if job.checkpoint.local is not None else None
    step_s = figures.step_s
    damaged: set[int] = set()
    resumes, recomputed, restarts, rollbacks, waits = [], 0, 0, 0, 0.0
    for fault in sorted(job.faults.inject, key=lambda f: f.step):
        if fault.kind == "damage_checkpoint":  # the newest persistent save before it
            damaged.add(_newest(fault.step - 1, persistent, damaged))
        elif fault.kind in ("kill_host", "hang_host"):
            every = local or persistent
            resume = _newest(fault.step - 1, every, damaged if local is None else set())
            recomputed += fault.step - resume
            damaged = {d for d in damaged if d <= resume}  # the steps after are saved anew
            restarts += 1
            waits += job.faults.hang_timeout_s if fault.kind == "hang_host" else 0.0
            resumes.append((fault.kind, fault.step, resume))
        elif fault.kind == "poison_batches":
            resume = _newest(fault.step - job.faults.spike.rollback_steps, persistent, damaged)
            recomputed += fault.step - resume
            rollbacks += 1
            resumes.append((fault.kind, fault.step, resume))
    saves = {"persistent": persistent, **({"local": local} if local else {})}
    lost = {
        "start-up": figures.startup_s,
        "saves": sum(figures.steps // every * figures.save_s.get(tier, 0.0)
                     for tier, every in saves.items()),
        "restarts": restarts * restart_s + waits,
        "rollbacks": rollbacks * restore_s,
        "recomputation": recomputed * step_s,
        "unmodelled": figures.unmodelled_s,
    }
    productive = figures.steps * step_s
    return Prediction(goodput=productive / (productive + sum(lost.values())),
                      resumes=resumes, recomputed_steps=recomputed, lost_s=lost)


def describe(prediction: Prediction, figures: RunFigures, restart_source: str) -> str:
    """Two lines: the prediction with its inputs, and the difference from the measurement."""
    points = 100 * (prediction.goodput - figures.goodput)
    return (f"model: goodput {100 * prediction.goodput:.1f}% from step {figures.step_s:.2f} s, "
            f"start-up {figures.startup_s:.1f} s, {prediction.recomputed_steps} steps "
            f"recomputed, restart {prediction.lost_s['restarts']:.1f} s in all "
            f"({restart_source})\n"
            f"measured: goodput {100 * figures.goodput:.1f}%; model - measured "
            f"{points:+.1f} points (goal within 5)")
