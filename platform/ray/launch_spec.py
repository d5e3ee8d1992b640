"""One translation from a job file to a Ray launch: `LaunchSpec.for_job(job, run_dir)`.

Every launch of a job's worker group (`palm run`, `palm eval|generate --cluster`, the
benchmarks through them) takes its failure budgets, timeouts, resize checks, run name and
storage from here, so a rule such as "JAX's heartbeat limit follows faults.hang_timeout_s"
holds for all of them:

    job.faults.max_restarts     -> max_failures (worker-group restarts)
    job.faults.init_timeout_s   -> jax_init_timeout_s (jax.distributed start-up)
    job.faults.hang_timeout_s   -> jax_heartbeat_timeout_s = hang + HEARTBEAT_MARGIN_S
    job.faults.warm_hosts       -> warm_hosts (host agents run the JAX processes)
    job.topology                -> shape, libtpu_init_args (resize_check_s: ray/resize.py)
    job.name, run_dir           -> run_name, storage_path (RUN_DIR/ray)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from palm_platform.run_dir import RunDir
from palm_platform.topology import SliceShape

# JAX declares a silent peer dead (and aborts everyone) after its heartbeat limit; it is
# set later than the watchdog (faults.hang_timeout_s), which names the stuck host and
# restarts cleanly.
HEARTBEAT_MARGIN_S = 30


@dataclass(frozen=True)
class LaunchSpec:
    """How one worker group is launched (ray/launch.py's `launch`).

    `max_failures`: restarts after a host process dies; `controller_failure_limit`: start-up
    retries (placement not ready within `feasibility_timeout_s`, or jax.distributed failing
    after `jax_init_timeout_s`); `max_preemption_failures`: restarts after preemptions.
    `fake_tpu=None` detects the local fake cluster from its node labels. `preimport`: modules
    the worker function imports, loaded while jax.distributed starts. `libtpu_init_args`:
    the job's compiler flags, for TPU hosts only.
    """

    shape: SliceShape
    run_name: str
    storage_path: str
    max_failures: int
    jax_init_timeout_s: int = 120
    jax_heartbeat_timeout_s: int = 100
    feasibility_timeout_s: float = 60
    controller_failure_limit: int = 1
    max_preemption_failures: int = 3
    fake_tpu: bool | None = None
    preimport: tuple[str, ...] = ()
    libtpu_init_args: str = ""
    warm_hosts: bool = False

    @classmethod
    def for_job(cls, job, run_dir: Path, *, purpose: str = "",
                preimport: tuple[str, ...] = ()) -> LaunchSpec:
        """The launch of `job`'s worker group writing under `run_dir` (Ray's files in
        RUN_DIR/ray); `purpose` ("eval", "generate") goes in the run name."""
        from palm_platform.compiler_flags import init_args

        topo, faults = job.topology, job.faults
        name = "-".join(part for part in (job.name, purpose, str(int(time.time()))) if part)
        return cls(
            shape=topo.shape(), run_name=name,
            storage_path=str(RunDir(Path(run_dir)).ray.resolve()),
            max_failures=faults.max_restarts, jax_init_timeout_s=int(faults.init_timeout_s),
            jax_heartbeat_timeout_s=int(faults.hang_timeout_s) + HEARTBEAT_MARGIN_S,
            preimport=preimport,
            libtpu_init_args=init_args(topo.effective_compiler_flags),
            warm_hosts=faults.warm_hosts,
        )

    def on_all_pods(self) -> LaunchSpec:
        """The same launch on every pod of the job, never fewer (not elastic), and no
        restart: for commands that run once (eval, generate)."""
        return replace(self, shape=replace(self.shape, min_pods=None), max_failures=0,
                       warm_hosts=False)  # their worker functions are the JAX process
