"""The plan for the hardware a run used, CPU devices included: what `palm profile` holds a
measured step against.

`palm plan` (report.py) compiles a job for abstract TPU v4 devices and times it with the v4
datasheet. A local run trains on CPU devices, so its calibration needs the same prediction for
CPU: the same train step (StepSpec, the job's mesh and shardings, the traced steps' batch)
compiled for this process's CPU devices, read by the same HLO walker (hlo.py: FLOPs and HBM
bytes through every loop, every collective with its bytes, kind and network), and timed with
figures measured here instead of a datasheet:

    peak FLOP/s per device   a matmul (train/mfu.py's device_peak_flops, as the run's own MFU)
    memory bandwidth         a jitted copy of 64 MiB, for HBM bytes and for collectives (on one
                             machine a collective is a copy between buffers, or gloo over
                             loopback between processes: the same bandwidth is assumed)

Prediction per category: compute = the per-instruction roofline; each collective kind = its
bytes at that bandwidth when the schedule does not overlap it ("exposed"); the cross-pod
exchange (the collectives whose groups span pods) on its own line; step = compute + exposed.
On TPU, `palm plan`'s own report gives these figures from the datasheet (step_time.py).
"""

from __future__ import annotations

import time

COPY_BYTES = 64 * 2**20


def measured_hardware() -> dict:
    """Peak FLOP/s of one device and memory bandwidth, measured in this process."""
    import jax
    import jax.numpy as jnp

    from palm_platform.train.mfu import device_peak_flops

    x = jnp.ones((COPY_BYTES // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)  # reads and writes every byte once
    copy(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        y = copy(x)
    y.block_until_ready()
    return {"peak_flops": device_peak_flops(),
            "memory_bandwidth": 5 * 2 * COPY_BYTES / (time.perf_counter() - start)}


def plan_on_devices(job, devices: list, batch: int, hardware: dict) -> dict:
    """Predicted seconds per step by category, and the MFU, for `job` at global batch `batch` on
    `devices` (the run's count of CPU devices, in this process)."""
    import jax

    from palm.flops import train_flops_per_token
    from palm_platform.mesh import batch_sharding, make_mesh
    from palm_platform.plan.hlo import analyze
    from palm_platform.pod_count import microbatches_at
    from palm_platform.train.optimizer import build_optimizer
    from palm_platform.train.state import state_shardings
    from palm_platform.train.step import StepSpec, make_train_step

    pods = job.topology.pods
    mesh = make_mesh(pods, job.data_parallel, job.mesh.model, devices)
    cfg = job.model.build()
    tx, lr = build_optimizer(job.optimizer)
    abstract_state, shardings = state_shardings(cfg, tx, mesh)
    microbatches = microbatches_at(batch, job.train.microbatch_sequences, pods, pods,
                                   job.data_parallel)
    step = make_train_step(StepSpec(cfg, pods, microbatches, job.mesh.cross_pod_dtype),
                           tx, mesh, shardings, lr)
    tokens = jax.ShapeDtypeStruct((batch, job.seq_len + 1), jax.numpy.int32,
                                  sharding=batch_sharding(mesh))
    compiled = step.lower(abstract_state, tokens).compile()
    n = len(devices)
    peak, bandwidth = hardware["peak_flops"], hardware["memory_bandwidth"]
    cost = analyze(compiled.as_text(), peak, bandwidth, pods=pods, devices_per_pod=n // pods)
    seconds: dict[str, float] = {"compute": cost.roofline_s}
    for c in cost.collectives:
        if not c.overlapped:
            kind = "cross-pod" if c.network == "dcn" else c.kind
            seconds[kind] = seconds.get(kind, 0.0) + c.bytes_per_chip * c.multiplier / bandwidth
    step_s = sum(seconds.values())
    formula = float(train_flops_per_token(cfg, job.seq_len)) * batch * job.seq_len
    return {"devices": n, "platform": devices[0].platform, "batch": batch,
            "microbatches": microbatches, "hardware": hardware, "seconds": seconds,
            "step_s": step_s, "formula_flops_per_step": formula,
            "mfu": formula / (step_s * n * peak)}
