"""Every place the platform reaches into Ray's or JAX's internals, behind one door.

Ray 2.60 and JAX 0.10 offer no public way to do what these functions do; each says what it
works around and which private name it touches. A Ray or JAX upgrade breaks here and only
here: importing this module checks the installed versions against the ones it was written
for (the versions uv.lock pins) and fails with one line naming both, so an upgrade is a
deliberate step (re-check each function below against the new source, then update
`WRITTEN_FOR`) instead of a silent change of behaviour somewhere in a run.

Not a touch point, but measured against Ray 2.60 and recorded in tests/support/listening.py: `ray
start` replaces a loopback node IP (`services.resolve_ip_for_localhost`), so the GCS and raylet bind
every interface whatever we pass.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

# The releases this module was checked against (uv.lock pins ray 2.60.0, jax 0.10.2).
# A different patch release is accepted: the internals below changed only across minor ones.
WRITTEN_FOR = {"ray": "2.60.0", "jax": "0.10.2"}


class IncompatibleVersionError(RuntimeError):
    """Ray or JAX is a release this module's private hooks were not checked against."""


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Raise IncompatibleVersionError unless ray and jax are the minor releases we were written
    for."""
    if installed is None:
        installed = {name: importlib.metadata.version(name) for name in WRITTEN_FOR}
    wrong = [f"{name} {installed[name]}" for name, pinned in WRITTEN_FOR.items()
             if _minor(installed[name]) != _minor(pinned)]
    if wrong:
        pinned = ", ".join(f"{name} {version}" for name, version in WRITTEN_FOR.items())
        raise IncompatibleVersionError(
            f"palm_platform/ray/compat.py was written for {pinned} but found {', '.join(wrong)}; "
            "install the versions uv.lock pins (bash scripts/setup.sh), or re-check compat.py "
            "against the new release and update its WRITTEN_FOR.")


check_versions()  # before touching anything private below


# --- Lines the driver never prints ----------------------------------------------------------
# jaxlib's gloo writes "[Gloo] Rank N is connected to M peer ranks. Expected number of connected
# peer ranks is : M" to stdout for every communicator it builds, unconditionally (no log level):
# about 40 lines per fake host in the local demo, and again after every restart, which Ray
# forwards to the driver's terminal. Ray's driver-side log deduplicator drops lines matching
# RAY_DEDUP_LOGS_SKIP_REGEX (public, but read once, when `ray` is first imported); if `ray` was
# imported before this module, the pattern goes into its private deduplicators instead. Lines
# written by two threads at once arrive torn, hence the other alternatives (and a torn write
# leaves an empty line: no worker line without text is worth printing). Also Ray 2.60's
# error line at every worker-group start about its own PreemptionWatcher actor (harmless,
# ray-project/ray#53727).
NEVER_PRINTED = (
    r"^\s*$|\[Gloo\] Rank \d|is connected to \d+ peer ranks|connected peer ranks is :"
    r"|class name: 'PreemptionWatcher' .* has constructor arguments in the object store"
)


def drop_never_printed_lines() -> None:
    """Make this driver skip the NEVER_PRINTED worker lines (the user's own pattern is kept)."""
    import re
    import sys

    own = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
    if own and NEVER_PRINTED in own:
        return
    pattern = f"{own}|{NEVER_PRINTED}" if own else NEVER_PRINTED
    os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = pattern
    if "ray._private.ray_logging" in sys.modules:
        from ray._private import ray_logging

        for deduplicator in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
            deduplicator.skip_re = re.compile(pattern)


drop_never_printed_lines()  # before `ray` reads the variable, below

from ray.train.v2.jax.config import JaxConfig, _JaxBackend  # noqa: E402 - after the check


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
    pod types itself (topology.v4_pod_type, no Ray import); tests/test_ray_topology.py checks
    that ours agrees with this one, so the feasibility check names exactly the head resource
    Ray will claim.
    """
    from ray._private.accelerators.tpu import infer_tpu_pod_type_from_topology

    return infer_tpu_pod_type_from_topology(topology, accelerator_type)


# --- The GCS key-value store --------------------------------------------------------------
# ray.experimental.internal_kv's functions are underscore-named (internal); they are the only
# store every worker and the driver of a job already share, with no actor to keep alive.

def kv_get(key: str, namespace: str) -> bytes | None:
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=namespace)


def kv_put(key: str, value: bytes, namespace: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_delete(key: str, namespace: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(key, namespace=namespace)


# --- Ray Train's SIGINT handler ---------------------------------------------------------

def trainer_without_sigint_handler(jax_trainer: type) -> type:
    """JaxTrainer without Ray's own SIGINT handler: `palm run` handles Ctrl-C (interrupt.py).

    Works around: Ray 2.60's `DataParallelTrainer.fit()` registers a SIGINT handler that
    aborts the controller, which kills the workers wherever they are (mid-checkpoint
    included) and replaces any handler the caller installed (ray/train/v2/api/
    data_parallel_trainer.py, private `_register_sigint_handler`). Fails loudly if the hook is
    gone, rather than silently letting Ray take Ctrl-C again.
    """
    if not hasattr(jax_trainer, "_register_sigint_handler"):
        raise IncompatibleVersionError(
            "this Ray version has no DataParallelTrainer._register_sigint_handler; update "
            "palm_platform/ray/compat.py for it")

    class PalmJaxTrainer(jax_trainer):
        controller = None  # the Train controller actor, once fit() made it

        def _register_sigint_handler(self, controller) -> None:
            # The caller's SIGINT handler stays in place; the controller is kept so an
            # elastic run below min_pods can stop it (pod_count.py).
            self.controller = controller

    return PalmJaxTrainer


# --- JAX's persistent cache written by every process on CPU -------------------------------
# Works around: jax 0.10's `jax._src.compiler._cache_write` writes only from process 0 (to
# avoid write contention on a shared filesystem such as GCS). On CPU the cache key of each
# process differs (jax/_src/cache_key.py strips the device assignment from `compile_options`
# only on GPU, and `accelerator_config` names the process's own devices), so process 0's
# entries never serve processes 1..N and they recompiled on every restart (measured:
# process 1 had 0 hits of 8 after a restart). With distinct keys there is no contention, so
# on the CPU backend every process writes its own entries; other backends keep JAX's rule.

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


def cache_writes_from_every_process_on_cpu() -> None:
    """Let processes 1..N write their own persistent-cache entries when the backend is CPU."""
    from jax._src import compilation_cache, compiler, config, distributed

    original = getattr(compiler._cache_write, "_palm_original", compiler._cache_write)

    @functools.wraps(original)
    def _cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                     host_callbacks, *args, **kwargs):
        if (getattr(backend, "platform", None) != "cpu" or distributed.global_state.process_id == 0
                or host_callbacks  # JAX never caches these (they call back into this process)
                or compile_time_secs < config.persistent_cache_min_compile_time_secs.value):
            return original(cache_key, compile_time_secs, module_name, backend, executable,
                            host_callbacks, *args, **kwargs)
        # What JAX's own function does past its process check (errors warn, as there).
        try:
            compilation_cache.put_executable_and_time(
                cache_key, module_name, executable, backend, int(compile_time_secs))
        except Exception as err:  # noqa: BLE001 - a cache that cannot be written costs a recompile
            warnings.warn(f"Error writing persistent compilation cache entry for "
                          f"'{module_name}': {type(err).__name__}: {err}", stacklevel=2)

    _cache_write._palm_original = original  # type: ignore[attr-defined]
    compiler._cache_write = _cache_write


# --- jax.distributed.initialize with a bound ----------------------------------------------
# Works around: Ray 2.60's JaxConfig calls `jax.distributed.initialize(addr, n, rank)` with
# JAX's default `initialization_timeout` (300 s), waits on it without a timeout, and offers no
# knob for it. A host that never joins (or stale MEGASCALE_* variables) stalls the worker
# group. `BoundedJaxConfig` subclasses JaxConfig and its private `_JaxBackend` to run one step
# before Ray's own set-up: on every worker it replaces `jax.distributed.initialize`
# process-wide with a wrapper carrying our timeout and a message that says what happened. The
# failure then surfaces in Ray Train as a worker-group start-up failure, which FailureConfig
# turns into a restart (counted against `controller_failure_limit`). (A runtime_env
# `worker_process_setup_hook` would be simpler, but Ray applies it only to the job-level
# runtime env from `ray.init`, not to Ray Train's worker runtime env.)

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
    logging.getLogger("jax._src.distributed").setLevel(logging.WARNING)
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

    @property
    def backend_cls(self):
        return _BoundedJaxBackend


# Unix times of a worker's start-up inside Ray Train's set-up, before the train function
# runs: the Trainer's `startup` event reports the spans between them (ray/worker.py).
WORKER_MARKS: dict[str, float] = {}


def _prepare_worker(timeout_s: int, heartbeat_timeout_s: int, *, bound: bool,
                    preimport: tuple[str, ...]) -> None:
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
    cache_writes_from_every_process_on_cpu()
    WORKER_MARKS["jax_imported"] = time.time()
    if bound:
        bound_jax_initialize(timeout_s, heartbeat_timeout_s)

    def run() -> None:
        for name in preimport:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the train function's own import reports it
                return

    if preimport:
        threading.Thread(target=run, name="palm-preimport", daemon=True).start()


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
                             preimport=backend_config.preimport)
        super().on_start(worker_group, backend_config)

    def on_shutdown(self, worker_group, backend_config: BoundedJaxConfig) -> None:
        # A worker failed (a host died, or the watchdog fired): the group is killed next, and
        # jax.distributed.shutdown is a barrier over every process that the dead one never
        # reaches. On a survivor still waiting in a collective (the host that had not yet seen
        # the loss) it occupied the actor, so Ray's worker shutdown waited its fixed 5 s
        # patience before killing it: in 6 of 14 local restarts measured. Skip it then.
        # (`get_latest_poll_status` is Ray Train's private WorkerGroup API.)
        poll = worker_group.get_latest_poll_status() if hasattr(
            worker_group, "get_latest_poll_status") else None
        if poll is not None and poll.errors:
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


# -- Ray re-points the session's libtpu log link at the driver's TPU_LOG_DIR ------------------
# Every process that joins a Ray session, a driver included, re-points the session's
# `logs/tpu_logs` link at its own TPU_LOG_DIR, else /tmp/tpu_logs (ray/_private/node.py
# `_init_temp`), and the head's log monitor streams every file behind that link to the
# drivers. On a laptop /tmp/tpu_logs holds every libtpu log ever written there (`palm plan`):
# 15,000 old lines flooded the README demo's terminal before its first step. The fake hosts
# run on CPU and write no libtpu logs, so for them the link may as well point at an empty
# folder of the driver's own. Real TPU clusters keep Ray's behaviour (their hosts' logs are
# worth streaming), so only drivers of fake-TPU clusters call this.
def keep_libtpu_logs_out_of_the_terminal() -> None:
    """Give this driver an empty TPU_LOG_DIR of its own, unless one is set."""
    if "TPU_LOG_DIR" in os.environ:
        return
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.gettempdir()) / f"palm-driver-tpu-logs-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    os.environ["TPU_LOG_DIR"] = str(folder)


# --- Ray's auth mode, read once per process ------------------------------------------------
def reread_auth_mode() -> None:
    """Make this process's Ray see a RAY_AUTH_MODE set after `ray._raylet` was imported.

    Ray 2.60 reads RAY_AUTH_MODE into its C++ config once (`ray._raylet.Config`), so a process
    that already touched Ray keeps sending no token after palm turns token mode on. Ray's own
    `_enable_token_auth` (authentication_token_setup.py) re-initialises that config the same
    way; nothing is read again if Ray is not loaded yet.
    """
    import sys

    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")
