"""The named inputs of `palm plan --goodput`: failure rates from published figures, bandwidths
assumed per host, and restart constants measured on the local cluster, scaled to a job.

Every figure here is printed with its source on the goodput table; change one by its flag
(`--mtbf-hours`, `--preemptions-per-day`) or here, with its new source.
"""

from __future__ import annotations

import dataclasses
import math

from palm_platform.plan.goodput_model import DAY_S, Inputs, Tier

# -- failure rates ------------------------------------------------------------------------------
# Llama 3 (arXiv 2407.21783, section 3.3.4): 419 unexpected interruptions in a 54-day snapshot
# on 16,384 H100 GPUs. Applied per accelerator chip (an assumption: a TPU v4 chip with its share
# of a host fails as often as a GPU with its share): 1.97e-5 per chip-hour.
UNEXPECTED_PER_CHIP_HOUR = 419 / (54 * 24 * 16_384)
UNEXPECTED_SOURCE = "Llama 3 (419 interruptions / 54 days / 16,384 GPUs), per chip"
# Cloud TPU docs, "Manage maintenance events with TPUs in All Capacity mode": a host's
# maintenance comes with notice and "won't be carried out more frequently than once every 90
# days". Each host's notice stops the whole job (a preemption with notice): hosts / 90 a day.
MAINTENANCE_DAYS_PER_HOST = 90.0
MAINTENANCE_SOURCE = "Cloud TPU maintenance: at most once per 90 days per host"
# Zu et al., "Resiliency at Scale: Managing Google's TPUv4 Machine Learning Supercomputer"
# (NSDI 2024): 99.98% system availability with OCS reconfiguration. The 0.02% is time the job's
# slice cannot run at all (infrastructure recovery, outside anything the platform does).
TPU_V4_AVAILABILITY = 0.9998
AVAILABILITY_SOURCE = "TPU v4 system availability 99.98% (Zu et al., NSDI 2024)"
# An unexpected failure that loses every RAM copy of some shard (both pods' hosts, or a host and
# its ring neighbour, within one recovery): correlated loss, e.g. a power or rack event. An
# assumption, not a published figure: 2% of unexpected failures.
P_RAM_LOST = 0.02
P_RAM_LOST_SOURCE = "assumption: 2% of failures lose every RAM copy (correlated loss)"
# Llama 3 (arXiv 2407.21783, section 3.3.4): 78% of the 419 unexpected interruptions were
# confirmed or suspected hardware issues. Taken as lost hosts (a TPU host with a failed chip
# or link is replaced); the other 22% (software bugs, collective timeouts, ...) as failures
# that leave every host reachable, which warm hosts restart in place. An assumption.
P_LIVE_HOST = 0.22
P_LIVE_HOST_SOURCE = "Llama 3: 78% of interruptions hardware (a lost host), the rest on live hosts"

# -- bandwidths per host (assumed) --------------------------------------------------------------
# Device-to-host copy of a TPU v4 host's 4 chips (PCIe Gen3 x16 per chip, ~12 GB/s usable,
# 4 in parallel): the blocking part of every save, and a RAM-tier restore's read back.
RAM_BYTES_PER_S = 4 * 12e9
RAM_SOURCE = "device-host copy, 4 x PCIe Gen3 x16 at ~12 GB/s (assumed)"
# One TPU VM writing/reading Orbax's TensorStore shards on GCS: ~1.5 GB/s per VM with many
# parallel objects (GCS's per-VM throughput depends on the VM's egress, 100 Gbps-class on TPU
# VMs; assumed at an eighth of line rate).
GCS_BYTES_PER_S = 1.5e9
GCS_SOURCE = "GCS per TPU VM ~1.5 GB/s, parallel objects (assumed)"
# Peer-pod restore: the restarted pod's hosts receive their shards over DCN from the other
# pod; PaLM's measured cross-pod rate per chip (plan_time.V4_DCN_PER_CHIP) x 4 chips a host.
DCN_SOURCE = "PaLM's measured DCN 1.65 GB/s per chip x 4 (plan_time)"


@dataclasses.dataclass(frozen=True)
class RestartConstants:
    """One restart's seconds on the local fake-TPU cluster, by the badput names of
    ml-goodput-measurement, as the `restart` record of metrics.jsonl splits them
    (supervise/restart_account.py); `measured` names the run. The restore is not taken from
    here for a pod job: its restore is modelled per tier from its bytes (`checkpoint_restore_s`
    is the local run's, for validating the model on this machine: plan/goodput_check.py); nor
    is the first compile: a pod job's is the plan's own compile of its step."""

    infrastructure_recovery_s: float  # failure -> the new worker process started
    initialization_s: float  # process start -> trainer ready (imports, jax.distributed, mesh)
    program_startup_s: float  # the first step's compile from the compilation cache, and run
    data_loading_s: float  # waiting for the first batch
    checkpoint_restore_s: float  # the local run's restore (palm-tiny, RAM tier)
    hosts: int
    measured: str


# A lost host's group restart: the kill_host restart of `python benchmarks/bench_soak.py
# --each-kind` (tests/jobs/ray-2host.yaml on 2 pods x 2 fake hosts x 2 chips, RAM tier every 2
# steps, warm hosts on as by default), 2026-12-07 on an otherwise idle 2-core machine: 14.0 s =
# infrastructure 8.0 (Ray Train's new worker processes and the host agents' imports) +
# initialization 1.7 (fork, jax.distributed, the trainer) + restore 1.4 + first step 2.9.
# The preemption restart of the same run (in place, outside the budgets) took 13.2 s from the
# agreed save. With warm hosts off the same restart split differently (the imports fall in
# the process's own initialization): 14.9 s = 1.5 + 8.9 + 2.1 + 2.4.
MEASURED = RestartConstants(
    infrastructure_recovery_s=8.0,
    initialization_s=1.7,
    program_startup_s=2.9,
    data_loading_s=0.0,
    checkpoint_restore_s=1.4,
    hosts=4,
    measured="bench_soak.py --each-kind kill_host restart (4 fake hosts, 2 cores)",
)


# A crashed JAX process on a live host with warm hosts (ray/host_agent.py): the crash_process
# restart of the same run: 4.1 s = infrastructure 0.2 + initialization 0.9 (fork,
# jax.distributed, the trainer) + restore 0.1 + first step 2.8 (its executable from the
# compilation cache, gloo's communicators).
WARM = RestartConstants(
    infrastructure_recovery_s=0.2,
    initialization_s=0.9,
    program_startup_s=2.8,
    data_loading_s=0.0,
    checkpoint_restore_s=0.1,
    hosts=4,
    measured="bench_soak.py --each-kind crash_process restart (4 fake hosts, 2 cores)",
)


def restart_at(hosts: int, constants: RestartConstants) -> float:
    """One restart of a job of `hosts` hosts by `constants`, the restore excluded (a pod
    job's restore is modelled per tier from its bytes)."""
    return (constants.infrastructure_recovery_s + initialization_at(hosts, constants)
            + constants.program_startup_s + constants.data_loading_s)


def initialization_at(hosts: int, constants: RestartConstants = MEASURED) -> float:
    """Initialization scaled from the measured host count: it grows with log2 of the hosts
    (Ray Train starts the workers in parallel; jax.distributed's barrier is a tree). An
    assumption, stated on the table."""
    return constants.initialization_s * math.log2(2 * hosts) / math.log2(2 * constants.hosts)


@dataclasses.dataclass(frozen=True)
class JobShape:
    """What the model needs from the job and its plan."""

    step_s: float
    hosts: int
    hosts_per_pod: int
    pods: int
    chips: int
    job_steps: int
    local_bytes_per_host: float  # the host's unique shards (RAM tier)
    persistent_bytes_per_host: float  # every unique shard once, written by one pod's hosts
    persistent_every: int
    local_every: int | None  # None: the job has no RAM tier
    warm_hosts: bool = False  # faults.warm_hosts: a failure on a live host restarts warm


def failure_rates(shape: JobShape, mtbf_hours: float | None,
                  preemptions_per_day: float | None) -> tuple[float, float, str, str]:
    """(unexpected per s, notices per s, source of each): the flags override the defaults."""
    if mtbf_hours is not None:
        unexpected, u_source = 1.0 / (mtbf_hours * 3600.0), "--mtbf-hours"
    else:
        unexpected = UNEXPECTED_PER_CHIP_HOUR * shape.chips / 3600.0
        u_source = UNEXPECTED_SOURCE
    if preemptions_per_day is not None:
        notices, p_source = preemptions_per_day / DAY_S, "--preemptions-per-day"
    else:
        notices = shape.hosts / MAINTENANCE_DAYS_PER_HOST / DAY_S
        p_source = MAINTENANCE_SOURCE
    return unexpected, notices, u_source, p_source


def tiers(shape: JobShape, dcn_bytes_per_s_per_host: float) -> tuple[Tier, ...]:
    """The job's tiers: persistent (gs://) always; the RAM tier when the job has one. A RAM
    restore takes the other pod's copy over DCN (2+ pods) or the neighbour's (1 pod: the
    same DCN-class host network)."""
    copy_s = shape.local_bytes_per_host / RAM_BYTES_PER_S
    persistent = Tier(
        name="persistent", save_s=copy_s,
        write_s=shape.persistent_bytes_per_host / GCS_BYTES_PER_S,
        restore_s=shape.local_bytes_per_host / GCS_BYTES_PER_S,
        interval_steps=shape.persistent_every,
    )
    if shape.local_every is None:
        return (persistent,)
    local = Tier(
        name="local", save_s=copy_s, write_s=copy_s,
        restore_s=shape.local_bytes_per_host / dcn_bytes_per_s_per_host + copy_s,
        interval_steps=shape.local_every,
    )
    return (persistent, local)


def inputs_for(shape: JobShape, unexpected_per_s: float, notices_per_s: float,
               dcn_bytes_per_s_per_host: float, first_compile_s: float,
               constants: RestartConstants = MEASURED) -> Inputs:
    """The model's inputs; `first_compile_s`: the job's first compile (start-up, once)."""
    startup = initialization_at(shape.hosts, constants) + first_compile_s
    return Inputs(
        step_s=shape.step_s, restart_s=restart_at(shape.hosts, constants), startup_s=startup,
        job_steps=shape.job_steps, tiers=tiers(shape, dcn_bytes_per_s_per_host),
        unexpected_per_s=unexpected_per_s, preempt_per_s=notices_per_s, p_ram_lost=P_RAM_LOST,
        unavailable=1.0 - TPU_V4_AVAILABILITY,
        warm_restart_s=restart_at(shape.hosts, WARM) if shape.warm_hosts else None,
        p_live_host=P_LIVE_HOST if shape.warm_hosts else 0.0,
    )
