"""Run a per-worker train function on TPU hosts with Ray Train v2's JaxTrainer, TPU path.

Facts about Ray 2.60 this relies on (read from its source, checked on the local cluster):

- Several pods: there is no "num_slices" field. `ScalingConfig(use_tpu=True,
  num_workers=pods*hosts, topology=<one slice>, accelerator_type="TPU-V4",
  resources_per_worker={"TPU": chips})`; the controller derives
  num_slices = num_workers / workers_per_slice (`ray.util.tpu.get_tpu_num_slices_for_workers`)
  and reserves them with `SlicePlacementGroup`: per slice it claims worker 0's
  "TPU-v4-16-head" resource (label ray.io/tpu-worker-id=0, ray.io/tpu-pod-type=v4-16),
  reads that node's TPU_NAME as the slice name, then gang-schedules one bundle per host with
  label ray.io/tpu-slice-name=<name>. Every bundle also carries
  "accelerator_type:TPU-V4" (from accelerator_type). Workers are ranked slice by slice.
- JaxConfig (use_tpu=True) on each worker: sets JAX_PLATFORMS=tpu only if unset; when
  num_slices > 1 sets MEGASCALE_COORDINATOR_ADDRESS (rank 0's IP), MEGASCALE_PORT=8081,
  MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID = rank // workers_per_slice (always
  overwritten, so a replaced slice never keeps stale values); then
  `jax.distributed.initialize(rank0_ip:free_port, num_workers, rank)` on "tpu", "cuda" or
  "cpu" alike. With JAX_PLATFORMS=cpu that is the CPU branch: gloo collectives
  (JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo) across the worker processes. No initialization
  timeout is passed (JAX default 300 s): jax_backend.BoundedJaxConfig bounds it.
- FailureConfig has three budgets: `max_failures` (worker-group errors: a host process died),
  `controller_failure_limit` (worker-group start-up failures and timeouts; default -1 =
  unlimited, which is how an infeasible placement retries forever) and
  `max_preemption_failures` (default -1). Start-up waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S
  (default 60 s, read from the driver's environment and passed to the controller) for the
  placement before counting a controller failure.
- Fake TPU hosts (`palm cluster up`) carry the label palm.dev/fake-tpu=true; their TPU_NAME,
  TPU_WORKER_ID, TPU_ACCELERATOR_TYPE and TPU_TOPOLOGY are inherited by the worker processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from palm_platform.compat.ray import trainer_without_sigint_handler
from palm_platform.hook_protocol import Preempted
from palm_platform.ray.feasibility import InfeasibleTopologyError, check_feasible
from palm_platform.ray.jax_backend import BoundedJaxConfig
from palm_platform.ray.launch_spec import LaunchSpec
from palm_platform.ray.worker_output import keep_libtpu_logs_out_of_the_terminal
from palm_platform.storage.env import forwarded_env
from palm_platform.topology import SliceShape, ensure_ray_accepts_v4_topology

logger = logging.getLogger(__name__)

START_TIMEOUT_ENV_VAR = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
HEALTH_CHECK_INTERVAL_ENV_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
PREEMPTION_WATCHER_ENV_VAR = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
ELASTIC_ATTEMPT_S = 20.0  # one placement attempt of an elastic job's worker group (_start_attempts)


@dataclass(frozen=True)
class LaunchResult:
    """What a finished run left: the run dir and its latest checkpoint with its metrics.

    Ray Train v2 keeps metrics only with a reported checkpoint, so `metrics` is None when
    the train function never reported one.
    """

    metrics: dict | None
    checkpoint_path: str | None
    run_path: str
    wall_s: float


def connect(
    address: str | None = None,
    *,
    run_state_dir: str | None = None,
    start_local: SliceShape | None = None,
    log_to_driver: bool = True,
) -> str:
    """Attach this process to a Ray cluster and return its GCS address.

    Order: `address`; RAY_ADDRESS (set for `ray job submit` entrypoints); the live cluster
    `palm cluster up` recorded in `run_state_dir`. If none and `start_local` is given, start
    that local fake-TPU cluster (it outlives this process, like `palm cluster up`).
    `log_to_driver=False`: a command that only talks to a run (`palm profile`) prints none of
    the lines Ray streams from the cluster's processes.
    """
    import ray
    from palm_platform.cluster import local as cluster

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    address = (
        address or os.environ.get("RAY_ADDRESS") or cluster.ray_address_from_state(run_state_dir)
    )
    if not address and start_local is not None:
        address = cluster.up(start_local, run_state_dir=run_state_dir).gcs_address
    if not address:
        raise ConnectionError(
            f"no Ray cluster to run on: RAY_ADDRESS is unset and no live local cluster is "
            f"recorded in {cluster.state_path(run_state_dir)}. Fix: `palm cluster up` (local "
            "fake TPU hosts) or export RAY_ADDRESS=<head>:6379."
        )
    if start_local is not None:  # a fake-TPU cluster: no libtpu logs worth streaming
        keep_libtpu_logs_out_of_the_terminal()
    from palm_platform.cluster import auth

    try:
        recorded = cluster.load_state(cluster.state_path(run_state_dir))
    except cluster.ClusterStateError:
        recorded = None  # not ours to judge here: `palm cluster status` names the file
    auth.enable_for_client(recorded.auth_mode if recorded is not None
                           and recorded.gcs_address == address else None)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    return ray.get_runtime_context().gcs_address


def worker_env(
    *, chips_per_host: int, fake_tpu: bool, env: dict[str, str] | None,
    libtpu_init_args: str = "",
) -> dict[str, str]:
    """Environment variables of every train worker. `libtpu_init_args` (the job's compiler
    flags, compiler_flags.init_args) reach TPU hosts only: fake-TPU hosts run JAX on CPU."""
    env_vars = dict(env or {})
    if not fake_tpu and libtpu_init_args:
        env_vars["LIBTPU_INIT_ARGS"] = libtpu_init_args
    if fake_tpu:
        env_vars["JAX_PLATFORMS"] = "cpu"
        env_vars["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
        flag = f"--xla_force_host_platform_device_count={chips_per_host}"
        env_vars["XLA_FLAGS"] = f"{env_vars.get('XLA_FLAGS', '')} {flag}".strip()
    return env_vars


def launch(
    train_fn: Callable[[dict], None],
    train_loop_config: dict,
    spec: LaunchSpec,
    *,
    address: str | None = None,
    run_state_dir: str | None = None,
    env: dict[str, str] | None = None,
) -> LaunchResult:
    """Run `train_fn(train_loop_config)` on one worker per TPU host; one JAX process each.

    `spec` (launch_spec.py) says how: failure budgets, timeouts, the shape. An elastic shape
    (min_pods < pods; pod_count.py): Ray Train runs on as many whole pods as the cluster has,
    at least min_pods, and restarts on fewer when a pod is lost; returned pods are `palm
    run`'s to notice (ray/resize.py); its start-up waits in shorter attempts
    (`_start_attempts`). `address`/`run_state_dir`: see `connect`;
    `env`: more environment variables for the workers.
    """
    import ray
    from ray.train.v2.jax import JaxTrainer

    connect(address, run_state_dir=run_state_dir)
    shape = spec.shape
    if ensure_ray_accepts_v4_topology(shape.topology):
        logger.info("added TPU v4 topology %s to Ray's table of valid slices", shape.topology)
    attempt_s, controller_failure_limit = _start_attempts(spec)
    # An elastic run starts on what is there, if at least min_pods.
    matching = check_feasible(ray.nodes(), shape.smallest())
    fake_tpu = all(view.fake for view in matching) if spec.fake_tpu is None else spec.fake_tpu
    # A local GCS emulator's variables reach the workers only on the local fake cluster.
    env = {**forwarded_env(local_cluster=fake_tpu), **(env or {})}
    # A worker that raises Preempted (every host saved the notice's step) restarts the group
    # in place, outside max_failures (ray/worker.py, compat/ray.py).
    trainer = trainer_without_sigint_handler(JaxTrainer, restarts_in_place=Preempted)(
        train_fn,
        train_loop_config=train_loop_config,
        jax_config=BoundedJaxConfig(use_tpu=True, initialization_timeout_s=spec.jax_init_timeout_s,
                                    heartbeat_timeout_s=spec.jax_heartbeat_timeout_s,
                                    preimport=spec.preimport, warm_hosts=spec.warm_hosts),
        scaling_config=_scaling_config(shape),
        run_config=_run_config(
            spec.run_name, spec.storage_path,
            _failure_config(spec, controller_failure_limit),
            worker_env(chips_per_host=shape.chips_per_host, fake_tpu=fake_tpu, env=env,
                       libtpu_init_args=spec.libtpu_init_args)),
    )
    with controller_env(_controller_env(attempt_s, fake_tpu=fake_tpu)):
        return _fit(trainer, spec, attempt_s=attempt_s,
                    controller_failure_limit=controller_failure_limit)


def _controller_env(attempt_s: float, *, fake_tpu: bool = False) -> dict[str, str]:
    """What Ray Train's controller reads from the driver's environment when it starts."""
    env = {
        # How long one placement attempt may wait before it counts against
        # controller_failure_limit.
        START_TIMEOUT_ENV_VAR: str(attempt_s),
        # How often the controller polls the workers (Ray's default 2 s): a dead worker is
        # seen up to that late, on every restart (benchmarks/bench_run.py). A poll is one
        # cheap actor call per host. An operator's own value wins.
        HEALTH_CHECK_INTERVAL_ENV_VAR: os.environ.get(HEALTH_CHECK_INTERVAL_ENV_VAR, "0.5"),
    }
    if fake_tpu and PREEMPTION_WATCHER_ENV_VAR not in os.environ:
        # The local fake-TPU cluster has no cloud to drain its nodes, so Ray's preemption
        # watcher (an actor process per worker-group start, polling the nodes' drain state)
        # has nothing to see; its start competed with the new workers for the laptop's
        # cores on every restart (issue 37). On real pods it stays: a node the cloud drains
        # makes Ray Train wait out the notice before it places the group again.
        env[PREEMPTION_WATCHER_ENV_VAR] = "0"
    return env


@contextlib.contextmanager
def controller_env(values: dict[str, str]) -> Iterator[None]:
    """`values` in the driver's environment while a Train v2 controller starts, then as before.

    Ray 2.60's controller reads some settings only from environment variables (e.g.
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S), which `DataParallelTrainer` copies from the
    driver's os.environ into the controller actor's runtime_env when `fit()` starts it
    (`get_env_vars_to_propagate`); there is no argument for them. Restored afterwards, so a
    launch leaves the driver's environment as it found it.
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _failure_config(spec: LaunchSpec, controller_failure_limit: int):
    from ray.train.v2.api.config import FailureConfig

    return FailureConfig(max_failures=spec.max_failures,
                         controller_failure_limit=controller_failure_limit,
                         max_preemption_failures=spec.max_preemption_failures)


def _start_attempts(spec: LaunchSpec) -> tuple[float, int]:
    """(seconds one placement attempt may wait, start-up attempts allowed after the first)."""
    feasibility_timeout_s, controller_failure_limit = (spec.feasibility_timeout_s,
                                                       spec.controller_failure_limit)
    if not spec.shape.elastic:
        return feasibility_timeout_s, controller_failure_limit
    # A lost pod's nodes stay in Ray's resource view until the GCS misses their heartbeats
    # (15-25 s here; Ray's defaults are the same on real clusters), so Train's elastic
    # policy first tries to restart at full size, and that placement times out (a
    # controller failure) before the restart on the pods left. Shorter attempts, as many
    # more as fill the same start-up window, and each allowed restart gets that window:
    # a pod loss cost a whole 60 s attempt (tests/ray/test_elastic_ray.py).
    attempt_s = min(feasibility_timeout_s, ELASTIC_ATTEMPT_S)
    return attempt_s, (max(controller_failure_limit, spec.max_failures)
                       * math.ceil(feasibility_timeout_s / attempt_s))


def _scaling_config(shape: SliceShape):
    """One worker per TPU host of `shape` (a range of whole slices when elastic).

    Ray Train's own resize monitor is off (an infinite interval): it would grow a running
    group by restarting it from the newest checkpoint, recomputing every step trained since.
    `palm run` grows it instead, after every host saved one agreed step (ray/resize.py)."""
    from palm_platform.pod_count import worker_counts
    from ray.train.v2.api.config import ScalingConfig

    return ScalingConfig(
        use_tpu=True,
        num_workers=worker_counts(shape),
        elastic_resize_monitor_interval_s=math.inf,
        topology=shape.topology,
        accelerator_type=shape.accelerator_type,
        resources_per_worker={"TPU": shape.chips_per_host},
        placement_strategy="SPREAD",
    )


def _run_config(run_name: str, storage_path: str, failure_config, env_vars: dict[str, str]):
    from ray.train import CheckpointConfig
    from ray.train.v2.api.config import LoggingConfig, RunConfig

    return RunConfig(
        name=run_name,
        storage_path=storage_path,
        failure_config=failure_config,
        checkpoint_config=CheckpointConfig(num_to_keep=None),
        # Ray Train's own INFO lines (placement, "Started training worker group", and on a
        # host loss about 130 lines of worker dumps per restart) stay in the session's
        # logs/train/ray-train-sys-*.log; the terminal gets the run's events instead
        # ("worker group restarted", "lost a peer", the watchdog's line).
        logging_config=LoggingConfig(log_level="WARNING"),
        worker_runtime_env={"env_vars": env_vars},
    )


def _fit(trainer, spec: LaunchSpec, *, attempt_s: float,
         controller_failure_limit: int) -> LaunchResult:
    """`trainer.fit()`, watched below min_pods when elastic; a start-up that kept failing
    becomes an InfeasibleTopologyError saying what the cluster lacks now."""
    import ray
    from palm_platform.ray.min_pods import MinPodsMonitor
    from ray.train.v2.api.exceptions import ControllerError  # start-up kept failing

    shape, feasibility_timeout_s = spec.shape, spec.feasibility_timeout_s
    least = shape.smallest()
    start = time.monotonic()

    def give_up(message: str) -> None:  # below min_pods Ray would wait for slices forever
        if trainer.controller is not None:
            ray.kill(trainer.controller)

    monitor = MinPodsMonitor(least, give_up, grace_s=feasibility_timeout_s)
    try:
        if shape.elastic:
            with monitor:
                result = trainer.fit()
        else:
            result = trainer.fit()
    except Exception as err:
        if monitor.error is not None:
            raise InfeasibleTopologyError(monitor.error) from err
        if not isinstance(err, ControllerError):
            raise
        raise _start_up_failure(spec, attempt_s, controller_failure_limit, err) from err
    if monitor.error is not None:
        raise InfeasibleTopologyError(monitor.error)
    return LaunchResult(
        metrics=result.metrics,
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
        run_path=result.path,
        wall_s=time.monotonic() - start,
    )


def _start_up_failure(spec: LaunchSpec, attempt_s: float, controller_failure_limit: int,
                      err: Exception) -> InfeasibleTopologyError:
    """Start-up kept failing: what the cluster lacks now (a host may have died since the
    first check), else how long each attempt waited."""
    import ray

    try:
        check_feasible(ray.nodes(), spec.shape.smallest())
    except InfeasibleTopologyError as infeasible:
        return infeasible
    return InfeasibleTopologyError(
        f"the worker group for {spec.shape.describe()} did not start in "
        f"{controller_failure_limit + 1} attempt(s) (placement waits up to "
        f"{attempt_s:g} s, jax.distributed.initialize up to "
        f"{spec.jax_init_timeout_s} s): {err}\nThe cluster has the slices; if another run "
        "holds them, wait for it or stop it."
    )
