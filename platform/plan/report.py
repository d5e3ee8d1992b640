"""`palm plan JOB.yaml`: compile the job's train step for its real TPU topology, here.

With the `tpu` extra (libtpu) installed, `jax.experimental.topologies` describes the job's
TPU v4 slices on a CPU machine; the train step is lowered against abstract, sharded shapes
(nothing is allocated) and compiled by the real TPU compiler, which reports per-chip memory.
FLOPs, HBM traffic and collectives are read from the compiled program by `hlo` (every
loop counted), checked against the program's own matmuls (`flops`), and turned into a
step-time range by `step_time`. Exit 1 when the step does not fit in a chip's HBM.

Compiler flags: the job's (`topology.compiler_flags` over the generation's defaults,
compiler_flags.py) are checked by a tiny compile in a child process, then set as
`LIBTPU_INIT_ARGS` before libtpu loads here: the TPU hosts get exactly that variable, so the
program (and the compilation cache key of `--warm-cache`) is theirs. `--compare FLAGS`
compiles the step once more with FLAGS as per-compile options on top, and prints both.
A flag libtpu rejects exits 2 with libtpu's sentence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

from palm_platform.compiler_flags import compiler_options, init_args
from palm_platform.metrics.events import format_bytes
from palm_platform.plan.step_time import (
    HARDWARE,
    V4_DCN_PER_CHIP,
    V4_HBM_BANDWIDTH,
    V4_HBM_BYTES,
    V4_ICI_ALL_LINKS,
    V4_ICI_LINK_BANDWIDTH,
    V4_PEAK_BF16_FLOPS,
)
from palm_platform.plan.step_time import format_seconds as _seconds
from palm_platform.plan.tpu_devices import tpu_devices
from palm_platform.train.optimizer import build_optimizer

# The paper's measured training throughput (PaLM, arXiv 2204.02311, Table 3), by model preset.
PAPER_MEASURED = {"palm-540b": {"mfu": 0.462, "tokens_per_s": 238.3e3}}


@dataclass
class PlanReport:
    job: str
    topology: str
    devices: int
    mesh: dict
    global_batch: int
    microbatches: int
    seq_len: int
    params: int
    argument_bytes: int
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    per_chip_bytes: int
    hbm_bytes: int
    fits: bool
    compiled_flops_per_step: float  # matmul FLOPs of the compiled program, every loop counted
    formula_flops_per_step: float  # appendix B: 6N + 12LHQT per token, no rematerialisation
    predicted_step_s: float  # best case of the range below
    predicted_mfu: float  # at the best case: an upper bound, never above 100%
    cross_pod_bytes_per_step: int
    compile_s: float
    program_flops_per_step: float = float("nan")  # matmuls of the jaxpr: formula + remat recompute
    cost_analysis_flops_per_step: float = float("nan")  # XLA's count: each loop body once
    loops: list = dataclasses.field(default_factory=list)  # trip counts of the compiled loops
    hbm_bytes_per_chip: float = float("nan")
    collectives: dict = dataclasses.field(default_factory=dict)  # "net/kind": per-chip bytes, count
    step_time: dict = dataclasses.field(default_factory=dict)  # step_time.StepTime
    mfu_range: dict = dataclasses.field(default_factory=dict)  # best / scheduled / worst
    paper: dict | None = None
    dominant: str = ""
    warnings: list = dataclasses.field(default_factory=list)
    hardware: dict = dataclasses.field(default_factory=lambda: dict(HARDWARE))
    compiler_flags: dict = dataclasses.field(default_factory=dict)  # what the step compiled with
    checkpoint_bytes: dict = dataclasses.field(default_factory=dict)  # per host, by tier

    def text(self) -> str:
        gib = 2**30
        lines = [
            f"job {self.job}: {self.devices} TPU v4 chips ({self.topology}), mesh {self.mesh}",
            f"  batch {self.global_batch} x {self.seq_len} tokens, {self.microbatches} "
            f"microbatch(es), {self.params / 1e9:.3f}B params",
            f"  per-chip memory: arguments {self.argument_bytes / gib:.2f} GiB + temporaries "
            f"{self.temp_bytes / gib:.2f} GiB + outputs {self.output_bytes / gib:.2f} GiB "
            f"- donated {self.alias_bytes / gib:.2f} GiB = {self.per_chip_bytes / gib:.2f} GiB "
            f"of {self.hbm_bytes / gib:.0f} GiB HBM: {'fits' if self.fits else 'DOES NOT FIT'}",
        ]
        if not self.step_time:  # refused by the compiler, or unreadable: no FLOPs or times
            return "\n".join(lines + [f"  WARNING: {w}" for w in self.warnings])
        loop_trips = sorted({n for _, n in self.loops}, reverse=True)
        trips = ", ".join(str(n) for n in loop_trips) or "none"
        t, m = self.step_time, self.mfu_range
        compiled, program = self.compiled_flops_per_step, self.program_flops_per_step
        formula = self.formula_flops_per_step
        lines += [
            f"  FLOPs per step: compiled {compiled:.4g} (through {len(self.loops)} loops, trip "
            f"counts {trips}), {compiled / program:.3f}x the program's matmuls",
            f"  vs formula 6N+12LHQT {formula:.4g}: ratio {compiled / formula:.3f} (the remat "
            f"policy and embedding lookup explain {program / formula:.3f}; XLA's cost analysis, "
            f"loop bodies once, says {self.cost_analysis_flops_per_step:.4g})",
            f"  per chip per step: HBM traffic {format_bytes(self.hbm_bytes_per_chip)}",
            *[f"  {network.upper()} per chip per step: " + ", ".join(
                f"{kind} {format_bytes(v['bytes'])} "
                f"({v['overlapped_bytes'] / max(v['bytes'], 1):.0%} overlapped)"
                for kind, v in rows) for network, rows in self._collective_rows()],
            f"  step time parts: matmuls at peak {_seconds(t['compute_at_peak_s'])}, HBM "
            f"{_seconds(t['hbm_s'])}, roofline of both {_seconds(t['compute_s'])}, ICI "
            f"{_seconds(t['ici_s'])}, DCN {_seconds(t['dcn_s'])}, not overlapped by the schedule "
            f"{_seconds(t['exposed_s'])}",
            f"  step time: best {_seconds(t['best_s'])} (MFU {m['best']:.1%}), as scheduled "
            f"{_seconds(t['scheduled_s'])} ({m['scheduled']:.1%}), worst {_seconds(t['worst_s'])} "
            f"({m['worst']:.1%})",
        ]
        if self.paper:
            p = self.paper
            lines.append(
                f"  paper (measured): MFU {p['mfu']:.1%}, {p['tokens_per_s'] / 1e3:.1f}k tokens/s "
                f"= {_seconds(p['step_s'])} per step at this batch")
            if p["step_s"] > t["worst_s"]:
                lines.append(
                    f"  the gap to the paper: {1 - t['worst_s'] / p['step_s']:.0%} of its step is "
                    "not explained by this program's FLOPs, HBM bytes and collectives at peak "
                    "rates")
            else:
                exposed = self._exposed_seconds()
                top = ", ".join(f"{key} {_seconds(v)}" for key, v in exposed[:2])
                lines.append(
                    "  the gap from our best case to the paper: "
                    f"{_seconds(p['step_s'] - t['best_s'])}; the schedule leaves "
                    f"{_seconds(t['exposed_s'])} of collectives not overlapped ({top})")
        lines += [
            f"  inside the range, beyond matmuls at peak, most time goes to {self.dominant}",
            f"  hardware: {V4_PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16, HBM "
            f"{V4_HBM_BANDWIDTH / 1e9:.0f} GB/s, ICI 6 links x "
            f"{V4_ICI_LINK_BANDWIDTH / 1e9:.0f} GB/s, DCN {V4_DCN_PER_CHIP / 1e9:.2f} GB/s per "
            "chip (sources in platform/plan/step_time.py)",
            f"  compiler flags: {init_args(self.compiler_flags) or 'none'}",
            *[f"  WARNING: {w}" for w in self.warnings],
            f"  cross-pod gradient exchange: {format_bytes(self.cross_pod_bytes_per_step)} per "
            "pod per step",
            f"  compiled in {self.compile_s:.1f} s",
        ]
        return "\n".join(lines)

    def _exposed_seconds(self) -> list[tuple[str, float]]:
        """[("net/kind", seconds of it not overlapped, at best-case bandwidth)], largest first."""
        bandwidth = {"ici": V4_ICI_ALL_LINKS, "dcn": V4_DCN_PER_CHIP}
        exposed = [(key, (row["bytes"] - row["overlapped_bytes"]) / bandwidth[key.split("/")[0]])
                   for key, row in self.collectives.items()]
        return sorted((kv for kv in exposed if kv[1] > 0), key=lambda kv: -kv[1])

    def _collective_rows(self) -> list[tuple[str, list]]:
        """[(network, [(kind, row), ...] largest first), ...]: ICI, then DCN."""
        rows = []
        for network in ("ici", "dcn"):
            found = [(key.split("/", 1)[1], v) for key, v in self.collectives.items()
                     if key.startswith(network + "/")]
            if found:
                rows.append((network, sorted(found, key=lambda kv: -kv[1]["bytes"])))
        return rows


def hbm_oom_bytes(message: str) -> int | None:
    """Bytes the TPU compiler said it needed, from its out-of-HBM error; None if not one."""
    import re

    match = re.search(r"memory required for HLO temporaries \(([0-9.]+)([KMGT])\)", message)
    if "RESOURCE_EXHAUSTED" not in message or match is None:
        return None
    return int(float(match.group(1)) * 1024 ** "KMGT".index(match.group(2)) * 1024)


def _sharded_bytes(x) -> int:
    """Bytes of one device's shard of an abstract array."""
    return math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize


class FlagsRejected(RuntimeError):
    """The TPU compiler refused the step's compiler flags (the message is libtpu's)."""


def plan(job, microbatches: int | None = None, save_hlo: str | None = None,
         pods: int | None = None, extra_flags: dict | None = None) -> PlanReport:
    """Compile the job's step; `pods` below the job's: an elastic job's degraded shape (same
    global batch on fewer pods, more microbatches: platform/pod_count.py). `extra_flags`: compiler
    flags over the job's (`--compare`)."""
    import jax

    from palm.flops import train_flops_per_token
    from palm_platform.mesh import batch_sharding, make_mesh
    from palm_platform.plan.checkpoint_bytes import checkpoint_bytes
    from palm_platform.plan.flops import jaxpr_matmul_flops
    from palm_platform.plan.hlo import HloParseError
    from palm_platform.pod_count import microbatches_at
    from palm_platform.train.state import state_shardings
    from palm_platform.train.step import StepSpec, cross_pod_bytes_per_step, make_train_step

    topo = job.topology
    if topo.ici_topology is None:
        raise SystemExit(f"job {job.name}: topology.ici_topology is needed to plan; set e.g. 4x8x8")
    pods = topo.pods if pods is None else pods
    devices = tpu_devices(topo.ici_topology, pods)
    mesh = make_mesh(pods, job.data_parallel, job.mesh.model, devices)
    cfg = job.model.build()
    tx, lr_schedule = build_optimizer(job.optimizer)
    abstract_state, shardings = state_shardings(cfg, tx, mesh)
    batch = max(p.sequences for p in job.train.batch_schedule)  # the largest phase is the worst
    if microbatches is None:
        microbatches = microbatches_at(batch, job.train.microbatch_sequences, topo.pods, pods,
                                       job.data_parallel)
    spec = StepSpec(cfg, pods, microbatches, job.mesh.cross_pod_dtype)
    step = make_train_step(spec, tx, mesh, shardings, lr_schedule)
    tokens = jax.ShapeDtypeStruct(
        (batch, job.seq_len + 1), jax.numpy.int32, sharding=batch_sharding(mesh)
    )

    flags = {**topo.effective_compiler_flags, **(extra_flags or {})}
    # The job's flags are in LIBTPU_INIT_ARGS when main() set them before libtpu loaded (the
    # hosts' exact set-up); otherwise, and for --compare's, they go with this compile.
    in_env = os.environ.get("LIBTPU_INIT_ARGS", "") == init_args(topo.effective_compiler_flags)
    options = compiler_options((extra_flags or {}) if in_env else flags) or None
    ckpt = checkpoint_bytes(abstract_state, devices)
    start = time.perf_counter()
    n = len(devices)
    formula = float(train_flops_per_token(cfg, job.seq_len)) * batch * job.seq_len
    try:
        compiled = step.lower(abstract_state, tokens).compile(compiler_options=options)
    except Exception as error:  # the TPU compiler refuses a program that cannot fit in HBM
        needed = hbm_oom_bytes(str(error))
        if needed is None and _status(str(error)) in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"):
            raise FlagsRejected(" ".join(str(error).split())) from None
        if needed is None:
            raise
        args = sum(_sharded_bytes(x) for x in jax.tree.leaves(abstract_state))
        return PlanReport(
            job=job.name, topology=f"{pods} x v4:{topo.ici_topology}", devices=n,
            mesh=dict(mesh.shape), global_batch=batch, microbatches=microbatches,
            seq_len=job.seq_len, params=cfg.num_params(), argument_bytes=args,
            temp_bytes=needed, output_bytes=0, alias_bytes=0, per_chip_bytes=args + needed,
            hbm_bytes=V4_HBM_BYTES, fits=False, compiled_flops_per_step=float("nan"),
            formula_flops_per_step=formula, predicted_step_s=float("nan"),
            predicted_mfu=float("nan"),
            cross_pod_bytes_per_step=cross_pod_bytes_per_step(
                abstract_state.params, pods, job.mesh.cross_pod_dtype),
            compile_s=time.perf_counter() - start, compiler_flags=flags, checkpoint_bytes=ckpt,
        )
    memory = compiled.memory_analysis()
    compile_s = time.perf_counter() - start
    per_chip = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                + memory.output_size_in_bytes - memory.alias_size_in_bytes)
    report = PlanReport(
        job=job.name, topology=f"{pods} x v4:{topo.ici_topology}", devices=n,
        mesh=dict(mesh.shape), global_batch=batch, microbatches=microbatches,
        seq_len=job.seq_len, params=cfg.num_params(),
        argument_bytes=memory.argument_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
        per_chip_bytes=per_chip, hbm_bytes=V4_HBM_BYTES, fits=per_chip <= V4_HBM_BYTES,
        compiled_flops_per_step=float("nan"), formula_flops_per_step=formula,
        predicted_step_s=float("nan"), predicted_mfu=float("nan"),
        cross_pod_bytes_per_step=cross_pod_bytes_per_step(
            abstract_state.params, pods, job.mesh.cross_pod_dtype),
        compile_s=compile_s, compiler_flags=flags, checkpoint_bytes=ckpt,
    )
    program = jaxpr_matmul_flops(jax.make_jaxpr(step)(abstract_state, tokens))
    cost = cost_analysis(compiled)
    hlo_text = compiled.as_text()
    if save_hlo:
        with open(save_hlo, "w") as f:
            f.write(hlo_text)
    try:
        add_step_analysis(report, hlo_text, program, float(cost.get("flops", 0.0)) * n,
                          pods, PAPER_MEASURED.get(job.model.preset) if pods == topo.pods else None)
    except HloParseError as error:  # memory is still worth reporting; FLOPs would be a guess
        report.warnings.append(f"no FLOPs or step time: the compiled program could not be read "
                               f"({error}); rerun with --save-hlo FILE and report it")
    return report


def _status(message: str) -> str:
    """The status code a JaxRuntimeError's message starts with (e.g. INVALID_ARGUMENT)."""
    return message.split(":", 1)[0].strip()


def cost_analysis(compiled) -> dict:
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, list) else cost


def add_step_analysis(report: PlanReport, hlo_text: str, program_flops: float,
                      cost_analysis_flops: float, pods: int, paper: dict | None) -> None:
    """FLOPs through every loop, collectives and the step-time range, from the compiled HLO."""
    from palm_platform.plan.flops import flops_warning
    from palm_platform.plan.hlo import analyze, summary
    from palm_platform.plan.step_time import dominant, step_time

    n, formula = report.devices, report.formula_flops_per_step
    cost = analyze(hlo_text, V4_PEAK_BF16_FLOPS, V4_HBM_BANDWIDTH, pods=pods)
    times = step_time(cost)
    compiled = cost.flops * n  # every chip runs the same program on its shard
    # Model FLOPs over time at peak can exceed 100% only if the compiled count is short of
    # the formula; never time a step below the formula's FLOPs at peak.
    floor_s = formula / (n * V4_PEAK_BF16_FLOPS)
    warning = flops_warning(report.job, compiled, program_flops, formula)
    report.warnings += [warning] if warning else []
    if compiled < formula:
        report.warnings.append(
            f"{report.job}: compiled FLOPs {compiled:.4g} are below the formula's "
            f"{formula:.4g}; MFU is computed with the formula's time at peak"
        )

    def mfu(seconds: float) -> float:
        return formula / (max(seconds, floor_s) * n * V4_PEAK_BF16_FLOPS)

    report.compiled_flops_per_step = compiled
    report.program_flops_per_step = program_flops
    report.cost_analysis_flops_per_step = cost_analysis_flops
    report.loops = cost.loops
    report.hbm_bytes_per_chip = cost.hbm_bytes
    report.collectives = summary(cost)
    report.step_time = asdict(times)
    report.mfu_range = {"best": mfu(times.best_s), "scheduled": mfu(times.scheduled_s),
                        "worst": mfu(times.worst_s)}
    report.predicted_step_s = max(times.best_s, floor_s)
    report.predicted_mfu = report.mfu_range["best"]
    report.dominant = dominant(times)
    if paper is not None:
        tokens = report.global_batch * report.seq_len
        report.paper = {**paper, "step_s": tokens / paper["tokens_per_s"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (YAML)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--microbatches", type=int, default=None,
                        help="override gradient-accumulation steps (default: from the job)")
    parser.add_argument("--save-hlo", metavar="PATH", default=None,
                        help="write the compiled program's HLO text here (to inspect its loops)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="write the TPU executables to the job's train.compile_cache, so TPU "
                        "hosts with the same jax/jaxlib/libtpu versions and XLA flags can load "
                        "them instead of compiling (unverified on real hosts; see "
                        "docs/operations.md)")
    parser.add_argument("--compare", metavar="FLAGS", default=None,
                        help='compile once more with these libtpu/XLA flags over the job\'s '
                        '(e.g. "--xla_enable_async_all_gather=false") and print both plans side '
                        "by side: step time, MFU, memory, exposed collectives")
    from palm_platform.plan import goodput

    goodput.add_arguments(parser)


def parse_compare_flags(text: str | None) -> dict | None:
    """`--compare`'s flags, parsed; FlagsRejected names a malformed one."""
    from palm_platform.compiler_flags import FlagSyntaxError, parse

    if text is None:
        return None
    try:
        flags = parse(text)
    except (FlagSyntaxError, ValueError) as error:
        raise FlagsRejected(f"--compare: {error}") from None
    if not flags:
        raise FlagsRejected('--compare: no flags given; write e.g. --compare "--xla_name=true"')
    return flags


def check_flags_or_raise(job, extra: dict | None = None) -> None:
    """The job's compiler flags (and `extra` over them) accepted by libtpu, or FlagsRejected
    with libtpu's sentence (a tiny compile in a child process: compiler_flags_check.py)."""
    from palm_platform.plan.compiler_flags_check import LibtpuMissing, rejection_in_subprocess

    topo = job.topology
    for flags, field in ((topo.effective_compiler_flags, "topology.compiler_flags"),
                         ({**topo.effective_compiler_flags, **(extra or {})}, "--compare")):
        if field == "--compare" and not extra:
            continue
        try:
            rejection = rejection_in_subprocess(flags, topo.accelerator)
        except LibtpuMissing as error:
            raise SystemExit(f"{error}: palm plan compiles with the TPU compiler. Fix: install "
                             "the TPU extra, pip install -e '.[tpu]'") from None
        if rejection is not None:
            raise FlagsRejected(
                f"{field}: libtpu rejects {init_args(flags)} for {topo.accelerator}: {rejection}. "
                "Fix: remove or correct that flag (defaults and their sources: "
                "platform/compiler_flags.py)")


def main(args: argparse.Namespace) -> int:
    from palm_platform.job import load_job_or_exit
    from palm_platform.plan import cache, goodput

    job = load_job_or_exit(args.job)
    problem = goodput.check_arguments(args)
    if problem is None and args.goodput and args.compare is not None:
        problem = "--goodput and --compare: run them one at a time"
    if problem is not None:
        print(f"palm plan: {problem}", file=sys.stderr)
        return 2
    try:
        extra = parse_compare_flags(args.compare)
        check_flags_or_raise(job, extra)
    except FlagsRejected as error:
        print(f"{args.job}: {error}", file=sys.stderr)
        return 2
    # What the TPU hosts get (ray/launch.py), set before libtpu loads in this process.
    os.environ["LIBTPU_INIT_ARGS"] = init_args(job.topology.effective_compiler_flags)
    compile_cache = None
    if getattr(args, "warm_cache", False):
        if job.train.compile_cache in (None, "off"):
            print(f"{args.job}: --warm-cache needs train.compile_cache, the cache the TPU hosts "
                  "read. Fix: set it (e.g. gs://BUCKET/palm/compile-cache/NAME)", file=sys.stderr)
            return 2
        from palm_platform.train.compile_cache import CompileCache

        compile_cache = CompileCache.enable(job.train.compile_cache)
    if args.goodput:
        return goodput.main(args, job, lambda: plan(job, args.microbatches), PlanReport)
    try:
        report = plan(job, args.microbatches, args.save_hlo)
        cache.store(cache.plan_key(job, job.topology.pods, args.microbatches, None),
                    asdict(report))
        compared = None if extra is None else plan(job, args.microbatches, extra_flags=extra)
    except FlagsRejected as error:  # a flag the tiny check's program did not exercise
        print(f"{args.job}: the TPU compiler refused the train step with compiler flags "
              f"{init_args({**job.topology.effective_compiler_flags, **(extra or {})})}: {error}. "
              "Fix: remove or correct the flag", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report)) if args.json else report.text())
    if compared is not None:
        from palm_platform.plan.compare import comparison

        print(json.dumps({"compare": {"flags": extra, "plan": asdict(compared)}}) if args.json
              else comparison(report, compared, args.compare))
    if job.topology.elastic and args.microbatches is None:  # the shape it shrinks to must fit too
        degraded = plan(job, pods=job.topology.fewest_pods)
        if args.json:
            print(json.dumps({"degraded": asdict(degraded)}))
        else:
            print(f"degraded shape (topology.min_pods={job.topology.fewest_pods}): "
                  f"{degraded.microbatches} microbatches, predicted step "
                  f"{_seconds(degraded.predicted_step_s)} vs {_seconds(report.predicted_step_s)} "
                  f"on {job.topology.pods} pods")
            print(degraded.text())
        if not degraded.fits:
            over = (degraded.per_chip_bytes - degraded.hbm_bytes) / 2**30
            print(f"{args.job}: on topology.min_pods={job.topology.fewest_pods} pod(s) the train "
                  f"step needs {over:.2f} GiB more than a chip's HBM. Fix: raise "
                  "topology.min_pods or lower train.microbatch_sequences", file=sys.stderr)
            return 1
    if compile_cache is not None:
        counts = compile_cache.counts()
        print(f"compilation cache {job.train.compile_cache}: {counts['misses']} executables "
              f"written, {counts['hits']} already there", file=sys.stderr)
    if not report.fits:
        over = (report.per_chip_bytes - report.hbm_bytes) / 2**30
        print(
            f"{args.job}: the train step needs {over:.2f} GiB more than a chip's HBM. Fix: raise "
            "train.microbatch_sequences' gradient accumulation (smaller microbatches), raise "
            "mesh.model, use more chips, or remat: full in model.overrides.",
            file=sys.stderr,
        )
        return 1
    return 0
