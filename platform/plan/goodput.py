"""`palm plan JOB --goodput`: the job's expected goodput and each checkpoint tier's interval.

The step time is the plan's (as scheduled, from the compiled program: taken from the plan
cache when the same step was compiled before), the bytes per host come from the plan's
shardings, the rest from `goodput_inputs` (each figure printed with its source).
"""

from __future__ import annotations

import argparse
import dataclasses

from palm_platform.metrics.events import format_bytes
from palm_platform.plan import goodput_inputs as gi
from palm_platform.plan.goodput_model import (
    DAY_S,
    Expectation,
    Inputs,
    expected,
    percentiles,
    recommended,
    simulate,
)
from palm_platform.plan.step_time import V4_DCN_PER_CHIP, format_seconds

CHIPS_PER_HOST = 4  # TPU v4: 4 chips per host VM
CAUSES = ("saves", "restarts", "restores", "recomputation", "start-up", "infrastructure")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--goodput", action="store_true",
                        help="predict the job's goodput and recommend checkpoint intervals")
    parser.add_argument("--mtbf-hours", type=float, default=None, metavar="H",
                        help="the whole job's mean time between failures (default: per chip, "
                        "from Llama 3's published rate)")
    parser.add_argument("--preemptions-per-day", type=float, default=None, metavar="P",
                        help="maintenance / preemption notices per day for the whole job")
    parser.add_argument("--simulate", type=int, default=None, metavar="N",
                        help="draw failures over N days; print goodput's median and 10th pct")


def check_arguments(args: argparse.Namespace) -> str | None:
    """One line naming the flag and its range, or None."""
    if not args.goodput:
        for flag in ("mtbf_hours", "preemptions_per_day", "simulate"):
            if getattr(args, flag) is not None:
                return f"--{flag.replace('_', '-')} needs --goodput"
        return None
    if args.mtbf_hours is not None and not 0.01 <= args.mtbf_hours <= 1e6:
        return f"--mtbf-hours {args.mtbf_hours}: must be between 0.01 and 1000000 hours"
    if args.preemptions_per_day is not None and not 0 <= args.preemptions_per_day <= 1e4:
        return f"--preemptions-per-day {args.preemptions_per_day}: must be between 0 and 10000"
    if args.simulate is not None and not 1 <= args.simulate <= 100_000:
        return f"--simulate {args.simulate}: must be between 1 and 100000 days"
    return None


def job_shape(job, report) -> gi.JobShape:
    hosts = max(report.devices // CHIPS_PER_HOST, 1)
    pods = job.topology.pods
    local = job.checkpoint.local  # the RAM tier, when the job has one
    return gi.JobShape(
        step_s=report.step_time["scheduled_s"], hosts=hosts, hosts_per_pod=hosts // pods,
        pods=pods, chips=report.devices, job_steps=job.train.steps,
        local_bytes_per_host=report.checkpoint_bytes["local_per_host"],
        persistent_bytes_per_host=report.checkpoint_bytes["persistent_per_host"],
        persistent_every=job.checkpoint.every_steps,
        local_every=None if local is None else local.every_steps,
        warm_hosts=job.faults.warm_hosts and hosts > 1,
    )


@dataclasses.dataclass
class GoodputPlan:
    shape: gi.JobShape
    inputs: Inputs
    job_intervals: dict[str, int]
    recommended_intervals: dict[str, int]
    at_job: Expectation
    at_recommended: Expectation
    sources: dict[str, str]
    simulated: tuple[float, float] | None = None  # (p10, median) at the recommended intervals
    # Without faults.warm_hosts: the expected goodput at the job's intervals if it had them.
    with_warm_hosts: Expectation | None = None

    def as_json(self) -> dict:
        out = {
            "step_s": self.inputs.step_s,
            "mtbf_h": 1.0 / self.inputs.unexpected_per_s / 3600.0,
            "restart_s": self.inputs.restart_s,
            "warm_restart_s": self.inputs.warm_restart_s,
            "p_live_host": self.inputs.p_live_host,
            "tiers": [{"name": t.name, "save_s": t.save_s, "restore_s": t.restore_s,
                       "interval_steps": t.interval_steps,
                       "recommended_interval_steps": self.recommended_intervals[t.name]}
                      for t in self.inputs.tiers],
            "goodput_job": self.at_job.goodput,
            "goodput_recommended": self.at_recommended.goodput,
            "lost": self.at_job.lost_s_per_day,
            "lost_recommended": self.at_recommended.lost_s_per_day,
            "sources": self.sources,
        }
        if self.simulated is not None:
            out["goodput_p10"], out["goodput_median"] = self.simulated
        return out


def goodput_plan(job, report, mtbf_hours: float | None, preemptions_per_day: float | None,
                 simulate_days: int | None) -> GoodputPlan:
    shape = job_shape(job, report)
    unexpected, notices, u_source, p_source = gi.failure_rates(shape, mtbf_hours,
                                                               preemptions_per_day)
    inputs = gi.inputs_for(shape, unexpected, notices, V4_DCN_PER_CHIP * CHIPS_PER_HOST,
                           first_compile_s=report.compile_s)
    job_iv = {t.name: t.interval_steps for t in inputs.tiers}
    rec = recommended(inputs)
    plan = GoodputPlan(
        shape=shape, inputs=inputs, job_intervals=job_iv, recommended_intervals=rec,
        at_job=expected(inputs, job_iv), at_recommended=expected(inputs, rec),
        sources={"unexpected": u_source, "notices": p_source, "ram": gi.RAM_SOURCE,
                 "gcs": gi.GCS_SOURCE, "dcn": gi.DCN_SOURCE,
                 "availability": gi.AVAILABILITY_SOURCE, "ram_lost": gi.P_RAM_LOST_SOURCE,
                 "restart": gi.MEASURED.measured, "warm": gi.WARM.measured,
                 "live_host": gi.P_LIVE_HOST_SOURCE},
    )
    if not shape.warm_hosts and shape.hosts > 1:
        warm = gi.inputs_for(dataclasses.replace(shape, warm_hosts=True), unexpected, notices,
                             V4_DCN_PER_CHIP * CHIPS_PER_HOST, first_compile_s=report.compile_s)
        plan.with_warm_hosts = expected(warm, job_iv)
    if simulate_days:
        plan.simulated = percentiles(simulate(inputs, rec, simulate_days))
    return plan


def _s(seconds: float) -> str:
    """The plan's seconds (format_seconds), in hours or minutes past a minute: MTBFs and
    start-ups are long."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return format_seconds(seconds)


def text(plan: GoodputPlan, step_source: str) -> str:
    i, s, src = plan.inputs, plan.shape, plan.sources
    c = gi.MEASURED
    rows = [
        ("step time (as scheduled)", _s(i.step_s), step_source),
        ("hosts", f"{s.hosts} ({s.pods} pod(s) x {s.hosts_per_pod})", "the job's topology"),
        ("unexpected failures", f"one per {_s(1 / i.unexpected_per_s)} (job)", src["unexpected"]),
        ("maintenance notices", f"{i.preempt_per_s * DAY_S:.2f} a day (job)", src["notices"]),
        ("slice unavailable", f"{i.unavailable:.2%} of the time", src["availability"]),
        ("RAM copies all lost", f"{i.p_ram_lost:.0%} of failures", src["ram_lost"]),
        ("group restart", _s(i.restart_s), f"a lost host, a notice: infrastructure recovery "
         f"{_s(c.infrastructure_recovery_s)} + initialization {_s(gi.initialization_at(s.hosts))}"
         f" ({_s(c.initialization_s)} on {c.hosts} hosts, x log2(2 x hosts) / log2(2 x "
         f"{c.hosts})) + program start-up {_s(c.program_startup_s)} + data loading "
         f"{_s(c.data_loading_s)}: {src['restart']}"),
        ("warm restart", (_s(i.warm_restart_s) if i.warm_restart_s is not None
                          else "off (faults.warm_hosts)"),
         f"{i.p_live_host:.0%} of unexpected failures ({src['live_host']}): infrastructure "
         f"{_s(gi.WARM.infrastructure_recovery_s)} + initialization "
         f"{_s(gi.initialization_at(s.hosts, gi.WARM))} + program start-up "
         f"{_s(gi.WARM.program_startup_s)}: {src['warm']}"
         if i.warm_restart_s is not None else "every failure restarts the worker group"),
        ("start-up (once)", _s(i.startup_s), f"initialization + first compile "
         f"{_s(i.startup_s - gi.initialization_at(s.hosts))} (the plan's compile of this step, "
         "here)"),
    ]
    for t in i.tiers:
        nbytes = s.local_bytes_per_host
        bw = "" if t.name == "local" else f"; {src['gcs']}"
        rows.append((f"{t.name} tier save", f"{_s(t.save_s)} blocking + {_s(t.write_s)} "
                     f"background", f"{format_bytes(int(nbytes))} per host; {src['ram']}{bw}"))
        rows.append((f"{t.name} tier restore", _s(t.restore_s),
                     src["dcn"] if t.name == "local" else src["gcs"]))
        rows.append((f"{t.name} tier interval", f"job {plan.job_intervals[t.name]} steps, "
                     f"recommended {plan.recommended_intervals[t.name]}",
                     "Young/Daly sqrt(2 x save x MTBF of the failures it restores)"))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines = [f"goodput plan for {s.chips} chips, {s.job_steps} steps "
             f"({_s(s.job_steps * i.step_s)} of steps)"]
    lines += [f"  {name:<{width}}  {value:<{vwidth}}  {source}" for name, value, source in rows]
    same = plan.job_intervals == plan.recommended_intervals
    if same:
        lines.append(f"  expected goodput: {plan.at_job.goodput:.1%} at the job's intervals, "
                     "which are the recommended ones")
    else:
        lines.append(f"  expected goodput: {plan.at_job.goodput:.1%} at the job's intervals, "
                     f"{plan.at_recommended.goodput:.1%} at the recommended ones")
    for label, e in (("job's", plan.at_job), ("recommended", plan.at_recommended))[:2 - same]:
        lost = ", ".join(f"{cause} {_s(e.lost_s_per_day[cause])}" for cause in CAUSES)
        lines.append(f"  lost per day at the {label} intervals: {lost}")
    if plan.with_warm_hosts is not None:
        e = plan.with_warm_hosts
        lines.append(f"  with faults.warm_hosts: true: {e.goodput:.1%} at the job's intervals "
                     f"(restarts {_s(e.lost_s_per_day['restarts'])} a day instead of "
                     f"{_s(plan.at_job.lost_s_per_day['restarts'])})")
    startup_bound = i.startup_s > s.job_steps * i.step_s
    if min(plan.at_job.goodput, plan.at_recommended.goodput) == 0 and not startup_bound:
        lines.append("  note: failures come faster than the job can progress between them: the "
                     "first-order model does not hold there (try --simulate)")
    if startup_bound:
        lines.append(f"  note: the job's {s.job_steps} steps take less than its start-up; "
                     "goodput is start-up bound")
    if plan.simulated is not None:
        p10, med = plan.simulated
        lines.append(f"  simulated days at the recommended intervals: median {med:.1%}, "
                     f"10th percentile {p10:.1%}")
    return "\n".join(lines)


def report_for(job, args, compile_plan, from_fields) -> tuple[object, str]:
    """The plan's report from the cache when the same step was compiled before (rebuilt by
    `from_fields`, PlanReport), else compiled now (and cached); with the sentence that says
    which."""
    from palm_platform.plan import cache

    key = cache.plan_key(job, job.topology.pods, args.microbatches, None)
    fields = cache.load(key)
    if fields is not None:
        try:
            return from_fields(**fields), f"the plan cache ({cache.cache_dir() / key}.json)"
        except TypeError:  # written by another version of PlanReport: compile again
            pass
    report = compile_plan()
    cache.store(key, dataclasses.asdict(report))
    return report, f"the step compiled now ({report.compile_s:.0f} s; cached for next time)"


def main(args: argparse.Namespace, job, compile_plan, from_fields) -> int:
    """`palm plan JOB --goodput`: exit 1 when the step does not fit or has no step time."""
    import json
    import sys

    report, step_source = report_for(job, args, compile_plan, from_fields)
    if not report.fits or not report.step_time:
        why = "does not fit in a chip's HBM" if not report.fits else "has no step time"
        print(f"{args.job}: the train step {why}; run `palm plan {args.job}` for why",
              file=sys.stderr)
        return 1
    plan = goodput_plan(job, report, args.mtbf_hours, args.preemptions_per_day, args.simulate)
    if args.json:
        print(json.dumps({**plan.as_json(), "step_source": step_source}))
    else:
        print(f"step time from {step_source}")
        print(text(plan, "palm plan (compiled schedule)"))
    return 0
