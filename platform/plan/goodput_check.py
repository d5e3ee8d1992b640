"""Validate the goodput model on a finished local run: predict its goodput from measured
components and its injected faults, and set the prediction beside what the run measured.

    figures = run_figures(read_records(run_dir))
    prediction = predict(job, figures, restart_s=restart_constant_s(hosts))  # or the run's
    prediction.goodput, figures.goodput

What is taken from the run (inputs the model does not predict): the productive seconds of a
step (the goodput tracker's, over the steps that count), the start-up (the first process's
start to its first step, plus the compiles of new batch shapes), each tier's mean blocking
save, the seconds the model has no term for (waiting for data, held-out evals, "other"), and
where each failure resumed, read from the run's own records instead of re-derived from the
recovery rules (which change; a copy of them here drifted each time):
- a restart of the worker group resumed from the step its attempt restored (the
  `checkpoint_restored` record of that attempt, or `start` when it began afresh);
- a loss spike rolled back to the `rollback` record's `to_step`.
What the model predicts: the saves' total from the tiers' cadences, and for each failure the
steps computed again (from the step its fault hit to the step it resumed from), plus the
restarts' seconds (`restart_s`: the measured constants of `goodput_inputs.MEASURED` scaled to
the job's hosts, as `palm plan --goodput` uses them, or a run's own mean), a hang's wait for
`faults.hang_timeout_s` and a rollback's restore (`restore_s`). The job's injected faults name
each failure's step: kill_host, hang_host and preempt faults pair in step order with the
restarts, poison_batches faults with the rollbacks. A restart or rollback with no fault of its
own (a real failure) counts the steps the run itself recorded as lost.
"""

from __future__ import annotations

import dataclasses
from statistics import mean

from palm_platform.plan import goodput_inputs as gi

UNMODELLED = ("data", "other", "eval")  # badput causes the model has no term for


RESTARTING_FAULTS = ("kill_host", "crash_process", "hang_host", "preempt")  # a restart


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where one failure resumed, as the run recorded it."""

    kind: str  # "restart" (the worker group) or "rollback" (a loss spike, in place)
    to_step: int  # the step training went on from
    lost_steps: int | None  # steps the run recorded as computed again (None: not recorded)


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
    resumes: tuple[Resume, ...] = ()  # each restart and rollback, in the run's order


def resumes(records: list[dict]) -> tuple[Resume, ...]:
    """Where each restart and rollback of a run resumed, from its records.

    A restart is an attempt > 0 that restored a checkpoint (`checkpoint_restored`) or began
    afresh (`start`); its lost steps are its `restart` record's `recomputed_steps`, written
    at the attempt's first finished step. A rollback is a `rollback` record: from its step
    (the spike's) back to `to_step`.
    """
    found: list[Resume] = []
    waiting: dict[int, int] = {}  # attempt -> its restart in `found`, until its `restart` record
    for r in records:
        if r["kind"] in ("checkpoint_restored", "start") and r.get("attempt", 0) > 0:
            waiting[r["attempt"]] = len(found)
            found.append(Resume("restart", r["step"], None))
        elif r["kind"] == "restart" and r.get("attempt") in waiting:
            index = waiting.pop(r["attempt"])
            found[index] = dataclasses.replace(found[index],
                                               lost_steps=r.get("recomputed_steps"))
        elif r["kind"] == "rollback":
            found.append(Resume("rollback", r["to_step"], r["step"] - r["to_step"]))
    return tuple(found)


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
        resumes=resumes(records),
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
    resumes: list[tuple[str, int, int]]  # (fault kind, its step, the step it resumed from)
    recomputed_steps: int
    lost_s: dict[str, float]  # by cause


def _with_faults(job, figures: RunFigures) -> list[tuple[str, int | None, Resume]]:
    """Each recorded resume with the injected fault behind it: (fault kind, its step, resume);
    a resume with no fault of its own: (its kind, None, resume)."""
    faults = sorted(job.faults.inject, key=lambda f: f.step)
    queues = {"restart": [f for f in faults if f.kind in RESTARTING_FAULTS],
              "rollback": [f for f in faults if f.kind == "poison_batches"]}
    paired = []
    for resume in figures.resumes:
        queue = queues[resume.kind]
        fault = queue.pop(0) if queue else None
        paired.append((fault.kind, fault.step, resume) if fault is not None
                      else (resume.kind, None, resume))
    return paired


def predict(job, figures: RunFigures, *, restart_s: float,
            restore_s: float = gi.MEASURED.checkpoint_restore_s) -> Prediction:
    """The run's goodput by the model's accounting, from `figures`' inputs, the resume points
    it recorded and `job`'s faults (`restart_s`: the seconds of one restart, restore included;
    `restore_s`: a rollback's)."""
    persistent = job.checkpoint.every_steps
    local = job.checkpoint.local.every_steps if job.checkpoint.local is not None else None
    step_s = figures.step_s
    resumes, recomputed, restarts, rollbacks, waits = [], 0, 0, 0, 0.0
    for kind, fault_step, resume in _with_faults(job, figures):
        if fault_step is not None:
            recomputed += max(fault_step - resume.to_step, 0)
            resumes.append((kind, fault_step, resume.to_step))
        else:
            recomputed += resume.lost_steps or 0
        if resume.kind == "restart":
            restarts += 1
            waits += job.faults.hang_timeout_s if kind == "hang_host" else 0.0
        else:
            rollbacks += 1
    resumes.sort(key=lambda entry: entry[1])
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
