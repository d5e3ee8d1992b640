"""Ray Train's JAX set-up with a bound: `jax.distributed.initialize` that gives up, and a
worker's start-up marks.

Works around: Ray 2.60's JaxConfig calls `jax.distributed.initialize(addr, n, rank)` with
JAX's default `initialization_timeout` (300 s), waits on it without a timeout, and offers no
knob for it. A host that never joins (or stale MEGASCALE_* variables) stalls the worker
group. `BoundedJaxConfig` subclasses JaxConfig and its backend (private: compat/ray.py) to
run one step before Ray's own set-up: on every worker it replaces `jax.distributed.initialize`
process-wide with a wrapper carrying our timeout and a message that says what happened. The
failure then surfaces in Ray Train as a worker-group start-up failure, which FailureConfig
turns into a restart (counted against `controller_failure_limit`). With warm hosts
(`warm_hosts`, ray/host_agent.py) the worker is a host agent that must never open a JAX
backend: the wrapper then only records Ray's arguments (DEFERRED_INITIALIZE), after Ray has
set the MEGASCALE_* variables in the agent's environment, and each generation of the JAX
process calls the bounded initialize itself. (A runtime_env
`worker_process_setup_hook` would be simpler, but Ray applies it only to the job-level
runtime env from `ray.init`, not to Ray Train's worker runtime env.)
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass

from palm_platform.compat import jax as jax_compat
from palm_platform.compat import ray as ray_compat
from palm_platform.ray.worker_output import drop_never_printed_lines

drop_never_printed_lines()  # before `ray` is first imported, below (it reads the pattern then)

from ray.train.v2.jax import JaxConfig  # noqa: E402 - after the pattern is set

_JaxBackend = ray_compat.jax_backend_class()
logger = logging.getLogger("palm")

# Unix times of a worker's start-up inside Ray Train's set-up, before the train function
# runs: the Trainer's `startup` event reports the spans between them (ray/worker.py).
WORKER_MARKS: dict[str, float] = {}
# Warm hosts: Ray's `jax.distributed.initialize(coordinator_address, num_processes,
# process_id)` arguments, recorded in the host agent instead of initialising it there.
DEFERRED_INITIALIZE: dict[str, object] = {}


def bound_jax_initialize(timeout_s: int, heartbeat_timeout_s: int = 100) -> None:
    """Make this process's `jax.distributed.initialize` default to `timeout_s`, with a clear error.

    Also: JAX's coordination-service heartbeat timeout from the job (longer than its hang
    timeout, so the watchdog names a stuck host before JAX aborts every peer with SIGABRT),
    and the coordinator bound to loopback when its address is loopback (JAX binds all
    interfaces by default; the local cluster keeps everything on 127.0.0.1).
    """
    import jax

    # "Starting/Connecting to JAX distributed service on ..." on every host at every start:
    # the run's `startup` event says how long this took.
    logging.getLogger(jax_compat.DISTRIBUTED_LOGGER).setLevel(logging.WARNING)
    original = getattr(jax.distributed.initialize, "_palm_original", jax.distributed.initialize)

    @functools.wraps(original)
    def initialize(*args, initialization_timeout: int = timeout_s, **kwargs):
        kwargs.setdefault("heartbeat_timeout_seconds", heartbeat_timeout_s)
        address = kwargs.get("coordinator_address") or (args[0] if args else None)
        if address and address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
            kwargs.setdefault("coordinator_bind_address", f"127.0.0.1:{address.rsplit(':', 1)[1]}")
        WORKER_MARKS["jax_init_started"] = time.time()
        try:
            done = original(*args, initialization_timeout=initialization_timeout, **kwargs)
            WORKER_MARKS["jax_initialized"] = time.time()
            return done
        except Exception as err:
            raise RuntimeError(
                f"jax.distributed.initialize did not complete within {initialization_timeout} s "
                f"on {socket.gethostname()} (TPU_NAME={os.environ.get('TPU_NAME')}, "
                f"MEGASCALE_SLICE_ID={os.environ.get('MEGASCALE_SLICE_ID')}): a host of the "
                "worker group never joined, or its MEGASCALE_* variables are stale. Ray Train "
                "restarts the worker group; raise jax_init_timeout_s if hosts are just slow."
            ) from err

    initialize._palm_original = original  # type: ignore[attr-defined]
    initialize._palm_timeout_s = timeout_s  # type: ignore[attr-defined]
    jax.distributed.initialize = initialize


def defer_jax_initialize() -> None:
    """In a host agent: `jax.distributed.initialize` (already bounded) only records its
    arguments; `initialize_deferred` (in each JAX process the agent starts) calls it."""
    import jax

    bounded = jax.distributed.initialize

    def record(coordinator_address=None, num_processes=None, process_id=None, *_, **__):
        DEFERRED_INITIALIZE.update(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)

    record._palm_bounded = bounded  # type: ignore[attr-defined]
    record._palm_timeout_s = getattr(bounded, "_palm_timeout_s", None)  # type: ignore
    jax.distributed.initialize = record


def initialize_deferred(coordinator_address: str) -> None:
    """In a JAX process started by a host agent: the bounded initialize with the recorded
    process count and id, against this generation's coordinator."""
    import jax

    bounded = getattr(jax.distributed.initialize, "_palm_bounded", jax.distributed.initialize)
    jax.distributed.initialize = bounded
    bounded(coordinator_address, DEFERRED_INITIALIZE["num_processes"],
            DEFERRED_INITIALIZE["process_id"])


def bounded_jax_init_timeout_s() -> int | None:
    """The bound `bound_jax_initialize` put on this process (None when it did not run)."""
    import jax

    return getattr(jax.distributed.initialize, "_palm_timeout_s", None)


@dataclass
class BoundedJaxConfig(JaxConfig):
    """JaxConfig whose `jax.distributed.initialize` gives up after `initialization_timeout_s`."""

    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100
    preimport: tuple[str, ...] = ()  # modules the train function imports (see _prepare_worker)
    warm_hosts: bool = False  # the worker is a host agent (ray/host_agent.py)

    @property
    def backend_cls(self):
        return _BoundedJaxBackend


def _prepare_worker(timeout_s: int, heartbeat_timeout_s: int, *, bound: bool,
                    preimport: tuple[str, ...], warm_hosts: bool = False) -> None:
    """On each worker: the CPU cache-write workaround (a no-op on TPU), the bounded
    jax.distributed.initialize, and `preimport` started on a thread.

    Why the thread: jax.distributed.initialize that follows mostly waits for the slowest host
    to join; the train function's imports (flax, optax, orbax, grain, the platform: 1.2-1.7 s
    per restart here) use that wait instead of starting after it. The train function's own
    import then finds the modules loaded, or waits on Python's import lock for the rest.
    """
    import importlib
    import threading

    WORKER_MARKS["worker_setup"] = time.time()
    jax_compat.cache_writes_from_every_process_on_cpu()
    WORKER_MARKS["jax_imported"] = time.time()
    if bound:
        bound_jax_initialize(timeout_s, heartbeat_timeout_s)
    if bound and warm_hosts:
        defer_jax_initialize()
        forward_sigterm_to_the_jax_process()  # here: an actor task runs on the main thread

    def run() -> None:
        for name in preimport:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the train function's own import reports it
                return

    if preimport:
        PREIMPORT.append(threading.Thread(target=run, name="palm-preimport", daemon=True))
        PREIMPORT[-1].start()


# The JAX process a host agent runs now (host_agent.py; empty between generations): a SIGTERM
# to the agent goes to it.
JAX_CHILD: list[int] = []


def forward_sigterm_to_the_jax_process() -> None:
    """A preemption notice (SIGTERM to the actor: GCE, `palm run`'s grow-back) belongs to the
    JAX process, whose notifier agrees on a step to save. Between generations, Ray's own
    handler. Must run on the actor's main thread (an actor task does)."""
    previous = signal.getsignal(signal.SIGTERM)

    def forward(signum, frame):
        if JAX_CHILD:
            os.kill(JAX_CHILD[-1], signal.SIGTERM)
        elif callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread: the JAX process then gets no notice this way
        logger.warning("host agent: SIGTERM not forwarded to the JAX process (not called "
                       "on the main thread)")



# The preimport thread: a host agent joins it before it forks (a fork while another thread
# holds Python's import lock would leave the child's copy of the lock held forever).
PREIMPORT: list = []


class _BoundedJaxBackend(_JaxBackend):
    def on_start(self, worker_group, backend_config: BoundedJaxConfig) -> None:
        if len(worker_group) == 1:
            # One host needs no jax.distributed; on CPU, initialising it routes the
            # in-process collectives through gloo and made every step ~3x slower
            # (benchmarks/bench_run.py).
            return
        # One call per worker before Ray's own set-up (each call waits for every host).
        worker_group.execute(_prepare_worker, backend_config.initialization_timeout_s,
                             backend_config.heartbeat_timeout_s,
                             bound=backend_config.use_tpu or backend_config.use_gpu,
                             preimport=backend_config.preimport,
                             warm_hosts=backend_config.warm_hosts)
        super().on_start(worker_group, backend_config)

    def on_shutdown(self, worker_group, backend_config: BoundedJaxConfig) -> None:
        # A worker failed (a host died, or the watchdog fired): the group is killed next, and
        # jax.distributed.shutdown is a barrier over every process that the dead one never
        # reaches. On a survivor still waiting in a collective (the host that had not yet seen
        # the loss) it occupied the actor, so Ray's worker shutdown waited its fixed 5 s
        # patience before killing it: in 6 of 14 local restarts measured. Skip it then.
        if ray_compat.worker_group_failed(worker_group):
            return
        # Other shutdowns can still meet processes that are gone: Ray logs a 7-line "Error
        # during JAX distributed shutdown: The actor died ..." that the run's own events
        # already say. Other shutdown warnings stay.
        shutdown_logger = logging.getLogger(_JaxBackend.__module__)
        shutdown_logger.addFilter(_not_a_dead_actor_shutdown)
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            shutdown_logger.removeFilter(_not_a_dead_actor_shutdown)


def _not_a_dead_actor_shutdown(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(
        "Error during JAX distributed shutdown: The actor died"
    )
