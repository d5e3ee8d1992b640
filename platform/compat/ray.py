"""The one door to Ray's internals (Ray 2.60): every private name the platform touches.

Ray 2.60 offers no public way to do what these functions do; each says what it works around
and which private name it touches. What the platform decides with them lives with the module
that owns the concern (which lines are never printed: ray/worker_output.py; the bounded
jax.distributed start-up: ray/jax_backend.py; token auth: cluster/auth.py; which v4 shapes are
real: topology.py). Importing this module checks the installed Ray against WRITTEN_FOR
(compat/__init__.py) before anything private is touched; nothing here imports Ray until a
function is called.

Not a touch point, but measured against Ray 2.60 and recorded in tests/support/listening.py:
`ray start` replaces a loopback node IP (`services.resolve_ip_for_localhost`), so the GCS and
raylet bind every interface whatever we pass.
"""

from __future__ import annotations

import contextlib
import functools
import sys

from palm_platform.compat import IncompatibleVersionError, check_written_for

WRITTEN_FOR = "2.60.0"  # uv.lock's pin
check_written_for("ray", "ray", WRITTEN_FOR)  # before touching anything private below


# --- The driver's log deduplicators ---------------------------------------------------------
# Ray reads RAY_DEDUP_LOGS_SKIP_REGEX (public) once, when `ray` is first imported, into its
# private deduplicators.

def set_dedup_skip_pattern(pattern: str) -> None:
    """Give this driver's live deduplicators `pattern` (nothing to do before `ray` is loaded:
    Ray reads RAY_DEDUP_LOGS_SKIP_REGEX then)."""
    import re

    if "ray._private.ray_logging" in sys.modules:
        from ray._private import ray_logging

        for deduplicator in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
            deduplicator.skip_re = re.compile(pattern)


# --- Where the workers' output lines go --------------------------------------------------
# A driver prints every worker line it receives with ray._private.worker.print_to_stdstream:
# the log stream (through global_worker_stdstream_dispatcher, whose "ray_print_logs" handler
# ray.init binds to that function) and the raylet's error reports (listen_error_messages calls
# the module's function by name). Ray's only public switch is all or nothing
# (`log_to_driver`), which would also lose the lines for the run's log file.
def route_worker_output(handler) -> None:
    """Send both streams to `handler(data, ignore_prefix, ray_print=Ray's printer)` instead.

    Call before `ray.init` (it binds the function then); called after, it also rebinds the
    live dispatcher's handler."""
    from ray._private import worker as ray_worker

    original = getattr(ray_worker.print_to_stdstream, "ray_original", ray_worker.print_to_stdstream)

    def print_to_stdstream(data, ignore_prefix: bool) -> None:
        handler(data, ignore_prefix, ray_print=original)

    print_to_stdstream.ray_original = original
    ray_worker.print_to_stdstream = print_to_stdstream
    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    if any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs",
                               functools.partial(print_to_stdstream, ignore_prefix=ignore_prefix))


# --- Ray's TPU topology table ------------------------------------------------------------
# ray._private.accelerators.tpu.VALID_TPU_TOPOLOGY is what ScalingConfig and
# SlicePlacementGroup validate a slice's topology against; Ray has no public accessor.

def v4_topologies() -> frozenset[str]:
    """The TPU v4 slice topologies Ray accepts ("2x2x2", ...)."""
    from ray._private.accelerators.tpu import VALID_TPU_TOPOLOGY

    return frozenset(VALID_TPU_TOPOLOGY["v4"])


def register_v4_topology(topology: str) -> None:
    """Add `topology` to Ray's table of valid v4 slices, in this process.

    Works around: Ray 2.60's table stops at 12x12x16 (2304 chips), but v4 slices go up to a
    full 16x16x16 pod and PaLM trained on 12x16x16 pods (topology.ensure_ray_accepts_v4_topology
    decides which shapes are real).
    """
    from ray._private.accelerators.tpu import VALID_TPU_TOPOLOGY

    VALID_TPU_TOPOLOGY["v4"].add(topology)


def tpu_pod_type(topology: str, accelerator_type: str) -> str:
    """Ray's own pod type for a topology ("2x2x2", "TPU-V4" -> "v4-16").

    Works around: the function Ray's slice placement uses is private
    (ray._private.accelerators.tpu.infer_tpu_pod_type_from_topology). The platform computes
    pod types itself (topology.v4_pod_type, no Ray import); tests/ray/test_ray_topology.py checks
    that ours agrees with this one, so the feasibility check names exactly the head resource
    Ray will claim.
    """
    from ray._private.accelerators.tpu import infer_tpu_pod_type_from_topology

    return infer_tpu_pod_type_from_topology(topology, accelerator_type)


# --- The GCS key-value store --------------------------------------------------------------
# ray.experimental.internal_kv's functions are underscore-named (internal); they are the only
# store every worker and the driver of a job already share, with no actor to keep alive.

# A process forked from a Ray worker (ray/host_agent.py's JAX processes) must not use the
# GCS client it inherited (its gRPC state belongs to the parent: a new GcsClient in the child
# hung here), so its agent serves the store for it: `kv_through(call)` routes this process's
# kv_* through `call(op, key, value, namespace)`.
_KV_ROUTE: list = []


def kv_through(call) -> None:
    _KV_ROUTE[:] = [call]


def kv_get(key: str, namespace: str) -> bytes | None:
    if _KV_ROUTE:
        return _KV_ROUTE[0]("get", key, None, namespace)
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=namespace)


def kv_put(key: str, value: bytes, namespace: str) -> None:
    if _KV_ROUTE:
        _KV_ROUTE[0]("put", key, value, namespace)
        return
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_delete(key: str, namespace: str) -> None:
    if _KV_ROUTE:
        _KV_ROUTE[0]("delete", key, None, namespace)
        return
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(key, namespace=namespace)


def kv_delete_prefix(prefix: str, namespace: str) -> int:
    """Delete every key that starts with `prefix`; how many went (driver side only)."""
    from ray.experimental.internal_kv import _internal_kv_del

    return _internal_kv_del(prefix, del_by_prefix=True, namespace=namespace)


def set_process_title(title: str) -> None:
    """The name `ps` shows (a forked child keeps its Ray worker parent's until renamed)."""
    import ray._raylet

    ray._raylet.setproctitle(title)


# --- Ray Train's SIGINT handler ---------------------------------------------------------

def trainer_without_sigint_handler(jax_trainer: type, *,
                                   restarts_in_place: type[Exception] | None = None) -> type:
    """JaxTrainer without Ray's own SIGINT handler (`palm run` handles Ctrl-C: interrupt.py),
    without Ray Data's per-start actor when the trainer has no datasets, and (when
    `restarts_in_place` is given) with a failure policy that restarts the group after workers
    raise that exception, without spending `max_failures` (`preemption_failure_policy`).

    Works around: Ray 2.60's `DataParallelTrainer.fit()` registers a SIGINT handler that
    aborts the controller, which kills the workers wherever they are (mid-checkpoint
    included) and replaces any handler the caller installed (ray/train/v2/api/
    data_parallel_trainer.py, private `_register_sigint_handler`). Fails loudly if the hook is
    gone, rather than silently letting Ray take Ctrl-C again.
    """
    if not hasattr(jax_trainer, "_register_sigint_handler"):
        raise IncompatibleVersionError(
            "this Ray version has no DataParallelTrainer._register_sigint_handler; update "
            "palm_platform/compat/ray.py for it")

    if not hasattr(jax_trainer, "_create_default_callbacks"):
        raise IncompatibleVersionError(
            "this Ray version has no DataParallelTrainer._create_default_callbacks; update "
            "palm_platform/compat/ray.py for it")

    class PalmJaxTrainer(jax_trainer):
        controller = None  # the Train controller actor, once fit() made it

        def _register_sigint_handler(self, controller) -> None:
            # The caller's SIGINT handler stays in place; the controller is kept so an
            # elastic run below min_pods can stop it (ray/min_pods.py).
            self.controller = controller

        def _create_default_callbacks(self) -> list:
            # Ray 2.60's DatasetsCallback starts a DatasetManager actor (a new process that
            # imports Ray Data) at every worker-group start, datasets or not. The platform
            # passes none (its data is the token store), and on a restart that process
            # competes with the hosts' new workers for the CPUs (issue 37).
            from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

        def fit(self):
            if restarts_in_place is None:
                return super().fit()
            with _failure_policy(preemption_failure_policy(restarts_in_place)):
                return super().fit()

    return PalmJaxTrainer


# --- Ray Train's failure policy -------------------------------------------------------------
# Works around: Ray 2.60's `DataParallelTrainer.fit()` builds its failure policy with the
# module-level `create_failure_policy(failure_config)` (always DefaultFailurePolicy) and offers
# no argument for another. A failure policy decides, for each worker-group error, RETRY or
# RAISE; Ray's own charges a preemption to `max_preemption_failures` only when the worker's
# node was drained by the cloud (`RayActorError.preempted`), not for a worker that saved and
# then raised.

@contextlib.contextmanager
def _failure_policy(policy_class: type):
    """`fit()` inside builds `policy_class(failure_config)` instead of Ray's default."""
    from ray.train.v2.api import data_parallel_trainer

    if not hasattr(data_parallel_trainer, "create_failure_policy"):
        raise IncompatibleVersionError(
            "this Ray version builds no failure policy with data_parallel_trainer."
            "create_failure_policy; update palm_platform/compat/ray.py for it")
    original = data_parallel_trainer.create_failure_policy
    data_parallel_trainer.create_failure_policy = policy_class
    try:
        yield
    finally:
        data_parallel_trainer.create_failure_policy = original


def preemption_failure_policy(preempted: type[Exception]) -> type:
    """Ray's default failure policy, except for a worker-group error whose every worker raised
    `preempted` (which has a `step`: each host saved it): RETRY, the group restarts in place
    and nothing is counted against a budget, unless the group was preempted at that step (or
    an earlier one) before: it made no progress since, and looping would not make any.

    The class is made here, not at import (nothing in this module imports Ray until called);
    Ray pickles it by value into the controller actor."""
    from ray.train.v2._internal.execution.failure_handling import (
        DefaultFailurePolicy,
        FailureDecision,
    )

    class PreemptionFailurePolicy(DefaultFailurePolicy):
        def __init__(self, failure_config):
            super().__init__(failure_config)
            self.preempted_at: int | None = None

        def make_decision(self, training_failed_error):
            failures = getattr(training_failed_error, "worker_failures", None) or {}
            if not failures or not all(isinstance(e, preempted) for e in failures.values()):
                return super().make_decision(training_failed_error)
            step = max(e.step for e in failures.values())
            if self.preempted_at is not None and step <= self.preempted_at:
                return FailureDecision.RAISE  # preempted again at the same step: no progress
            self.preempted_at = step
            return FailureDecision.RETRY

    return PreemptionFailurePolicy


# --- Ray Train's JAX backend ----------------------------------------------------------------
# JaxConfig's backend (`_JaxBackend`, private) runs jax.distributed's set-up on the workers;
# ray/jax_backend.py subclasses it to run a step before it. The worker group's latest poll
# (`get_latest_poll_status`, private WorkerGroup API) says whether a worker failed.

def jax_backend_class() -> type:
    """Ray Train's JAX backend class (ray.train.v2.jax.config._JaxBackend)."""
    from ray.train.v2.jax.config import _JaxBackend

    return _JaxBackend


def worker_group_failed(worker_group) -> bool:
    """Whether the worker group's latest poll saw a worker fail (False when unknown)."""
    poll = worker_group.get_latest_poll_status() if hasattr(
        worker_group, "get_latest_poll_status") else None
    return bool(poll is not None and poll.errors)


# --- Ray's auth mode, read once per process ------------------------------------------------
def reread_auth_mode() -> None:
    """Make this process's Ray see a RAY_AUTH_MODE set after `ray._raylet` was imported.

    Ray 2.60 reads RAY_AUTH_MODE into its C++ config once (`ray._raylet.Config`), so a process
    that already touched Ray keeps sending no token after palm turns token mode on. Ray's own
    `_enable_token_auth` (authentication_token_setup.py) re-initialises that config the same
    way; nothing is read again if Ray is not loaded yet.
    """
    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")
