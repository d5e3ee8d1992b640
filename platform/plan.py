"""`palm plan JOB.yaml`: compile the job's train step for its real TPU topology, here.

With the `tpu` extra (libtpu) installed, `jax.experimental.topologies` describes the job's
TPU v4 slices on a CPU machine; the train step is lowered against abstract, sharded shapes
(nothing is allocated) and compiled by the real TPU compiler, which reports per-chip memory
and FLOPs. Exit 1 when the step does not fit in a chip's HBM.
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

V4_HBM_BYTES = 32 * 2**30  # TPU v4: 32 GiB HBM per chip
V4_PEAK_BF16_FLOPS = 275e12  # TPU v4: 275 TFLOP/s bf16 per chip


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
    compiled_flops_per_step: float
    formula_flops_per_step: float
    predicted_step_s: float
    predicted_mfu: float
    cross_pod_bytes_per_step: int
    compile_s: float

    def text(self) -> str:
        gib = 2**30
        return "\n".join([
            f"job {self.job}: {self.devices} TPU v4 chips ({self.topology}), mesh {self.mesh}",
            f"  batch {self.global_batch} x {self.seq_len} tokens, {self.microbatches} microbatch(es), "
            f"{self.params / 1e9:.3f}B params",
            f"  per-chip memory: arguments {self.argument_bytes / gib:.2f} GiB + temporaries "
            f"{self.temp_bytes / gib:.2f} GiB + outputs {self.output_bytes / gib:.2f} GiB "
            f"- donated {self.alias_bytes / gib:.2f} GiB = {self.per_chip_bytes / gib:.2f} GiB "
            f"of {self.hbm_bytes / gib:.0f} GiB HBM: {'fits' if self.fits else 'DOES NOT FIT'}",
            f"  FLOPs per step: compiled {self.compiled_flops_per_step:.4g} vs formula 6N+12LHQT "
            f"{self.formula_flops_per_step:.4g} (ratio {self.compiled_flops_per_step / self.formula_flops_per_step:.3f}; "
            f"rematerialisation adds a forward pass)",
            f"  predicted step {self.predicted_step_s:.3f} s and MFU {self.predicted_mfu:.1%} if every "
            f"compiled FLOP ran at {V4_PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s per chip (an upper bound)",
            f"  cross-pod gradient exchange: {self.cross_pod_bytes_per_step / 1e9:.2f} GB per pod per step",
            f"  compiled in {self.compile_s:.1f} s",
        ])


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


def tpu_devices(ici_topology: str, pods: int):
    """Abstract TPU v4 devices of `pods` slices of `ici_topology` chips (megacore: 1 per chip)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # quiets libtpu's host probe
    # Planning touches no TPU: let several planners (or a test beside a run) load libtpu.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=f"v4:{ici_topology}", chip_config_name="megacore",
            chips_per_host_bounds=(2, 2, 1), num_slices=pods,
        )
    except Exception as error:  # libtpu missing or the topology unknown to it
        raise SystemExit(
            f"cannot describe TPU v4 topology {ici_topology} x {pods} pod(s): {error}\n"
            "Fix: install the TPU extra (pip install -e '.[tpu]') and use a valid v4 topology."
        ) from None
    return topology.devices


def plan(job, microbatches: int | None = None) -> PlanReport:
    import jax

    from palm.flops import train_flops_per_token
    from palm_platform.mesh import batch_sharding, make_mesh
    from palm_platform.train.optimizer import build_optimizer, learning_rate_schedule
    from palm_platform.train.state import state_shardings
    from palm_platform.train.step import StepSpec, cross_pod_bytes_per_step, make_train_step

    topo = job.topology
    if topo.ici_topology is None:
        raise SystemExit(f"job {job.name}: topology.ici_topology is needed to plan; set e.g. 4x8x8")
    devices = tpu_devices(topo.ici_topology, topo.pods)
    mesh = make_mesh(topo.pods, job.data_parallel, job.mesh.model, devices)
    cfg = job.model.build()
    tx = build_optimizer(job.optimizer)
    abstract_state, shardings = state_shardings(cfg, tx, mesh)
    batch = max(p.sequences for p in job.train.batch_schedule)  # the largest phase is the worst
    if microbatches is None:
        micro = job.train.microbatch_sequences
        microbatches = batch // micro if micro else 1
    spec = StepSpec(cfg, topo.pods, microbatches, job.mesh.cross_pod_dtype)
    step = make_train_step(spec, tx, mesh, shardings, learning_rate_schedule(job.optimizer))
    tokens = jax.ShapeDtypeStruct((batch, job.seq_len + 1), jax.numpy.int32, sharding=batch_sharding(mesh))

    micro_tokens = jax.ShapeDtypeStruct((batch // microbatches, job.seq_len + 1), jax.numpy.int32,
                                        sharding=batch_sharding(mesh))

    def compile_microbatch_step(model_cfg):
        """One microbatch, no accumulation loop (cost analysis would count its body once)."""
        abstract, shard = state_shardings(model_cfg, tx, mesh)
        step_spec = dataclasses.replace(spec, model=model_cfg, microbatches=1)
        fn = make_train_step(step_spec, tx, mesh, shard, learning_rate_schedule(job.optimizer))
        return fn.lower(abstract, micro_tokens).compile()

    def flops(compiled) -> float:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", 0.0)) * len(devices)  # cost_analysis is per device

    start = time.perf_counter()
    n = len(devices)
    formula = float(train_flops_per_token(cfg, job.seq_len)) * batch * job.seq_len
    try:
        compiled = step.lower(abstract_state, tokens).compile()
    except Exception as error:  # the TPU compiler refuses a program that cannot fit in HBM
        needed = hbm_oom_bytes(str(error))
        if needed is None:
            raise
        args = sum(_sharded_bytes(x) for x in jax.tree.leaves(abstract_state))
        return PlanReport(
            job=job.name, topology=f"{topo.pods} x v4:{topo.ici_topology}", devices=n,
            mesh=dict(mesh.shape), global_batch=batch, microbatches=microbatches,
            seq_len=job.seq_len, params=cfg.num_params(), argument_bytes=args,
            temp_bytes=needed, output_bytes=0, alias_bytes=0, per_chip_bytes=args + needed,
            hbm_bytes=V4_HBM_BYTES, fits=False, compiled_flops_per_step=float("nan"),
            formula_flops_per_step=formula, predicted_step_s=float("nan"),
            predicted_mfu=float("nan"),
            cross_pod_bytes_per_step=cross_pod_bytes_per_step(
                abstract_state.params, topo.pods, job.mesh.cross_pod_dtype),
            compile_s=time.perf_counter() - start,
        )
    memory = compiled.memory_analysis()
    # XLA's cost analysis counts a while loop's body once, and both the layers (scan) and the
    # microbatches (gradient accumulation) are loops: count FLOPs on two small compiles of one
    # microbatch with 1 and 2 unrolled layers, and extrapolate to all layers and microbatches.
    one, two = (flops(compile_microbatch_step(dataclasses.replace(cfg, num_layers=k, scan_layers=False)))
                for k in (1, 2))
    compiled_flops = microbatches * (one + (cfg.num_layers - 1) * (two - one))
    compile_s = time.perf_counter() - start

    per_chip = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                + memory.output_size_in_bytes - memory.alias_size_in_bytes)
    step_s = compiled_flops / (n * V4_PEAK_BF16_FLOPS)
    return PlanReport(
        job=job.name, topology=f"{topo.pods} x v4:{topo.ici_topology}", devices=n,
        mesh=dict(mesh.shape), global_batch=batch, microbatches=microbatches,
        seq_len=job.seq_len, params=cfg.num_params(),
        argument_bytes=memory.argument_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
        per_chip_bytes=per_chip, hbm_bytes=V4_HBM_BYTES, fits=per_chip <= V4_HBM_BYTES,
        compiled_flops_per_step=compiled_flops, formula_flops_per_step=formula,
        predicted_step_s=step_s, predicted_mfu=formula / (step_s * n * V4_PEAK_BF16_FLOPS),
        cross_pod_bytes_per_step=cross_pod_bytes_per_step(
            abstract_state.params, topo.pods, job.mesh.cross_pod_dtype),
        compile_s=compile_s,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (YAML)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--microbatches", type=int, default=None,
                        help="override gradient-accumulation steps (default: from the job)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="write the TPU executables to the job's train.compile_cache, so TPU "
                        "hosts with the same jax/jaxlib/libtpu versions and XLA flags can load "
                        "them instead of compiling (unverified on real hosts; see README)")


def main(args: argparse.Namespace) -> int:
    from palm_platform.job import load_job_or_exit

    job = load_job_or_exit(args.job)
    cache = None
    if getattr(args, "warm_cache", False):
        if job.train.compile_cache in (None, "off"):
            print(f"{args.job}: --warm-cache needs train.compile_cache, the cache the TPU hosts "
                  "read. Fix: set it (e.g. gs://BUCKET/palm/compile-cache/NAME)", file=sys.stderr)
            return 2
        from palm_platform.train.compile_cache import CompileCache

        cache = CompileCache.enable(job.train.compile_cache)
    report = plan(job, args.microbatches)
    print(json.dumps(asdict(report)) if args.json else report.text())
    if cache is not None:
        counts = cache.counts()
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
