"""The one door to JAX's internals (jax 0.10): every private name the platform touches.

- jax.distributed's state that JAX gives no public accessor for: the coordination-service
  client (its `wait_at_barrier` is a gRPC barrier with a timeout, which a background thread
  may wait at beside the train step's collectives: the RAM tier's commit,
  checkpoint/local_tier.py) and the preemption sync manager behind
  `multihost_utils.reached_preemption_sync_point` (checkpoint/preemption.py);
- the persistent compilation cache's writer, so that on CPU every process writes its own
  entries (ray/jax_backend.py calls it on each worker);
- the logger jax.distributed announces itself on.

Importing this module checks the installed jax against WRITTEN_FOR (compat/__init__.py).
"""

from __future__ import annotations

import functools
import warnings

from palm_platform.compat import check_written_for

WRITTEN_FOR = "0.10.2"  # uv.lock's pin
check_written_for("jax", "jax", WRITTEN_FOR)  # before touching anything private below

# jax.distributed's "Starting/Connecting to JAX distributed service on ..." lines.
DISTRIBUTED_LOGGER = "jax._src.distributed"


def coordination_client():
    """This process's coordination-service client (None before jax.distributed.initialize)."""
    from jax._src import distributed

    return distributed.global_state.client


def preemption_sync_manager():
    """The preemption sync manager of this process's jax.distributed, or None (started
    without the preemption service)."""
    from jax._src import distributed

    return getattr(distributed.global_state, "preemption_sync_manager", None)


# --- JAX's persistent cache written by every process on CPU -------------------------------
# Works around: jax 0.10's `jax._src.compiler._cache_write` writes only from process 0 (to
# avoid write contention on a shared filesystem such as GCS). On CPU the cache key of each
# process differs (jax/_src/cache_key.py strips the device assignment from `compile_options`
# only on GPU, and `accelerator_config` names the process's own devices), so process 0's
# entries never serve processes 1..N and they recompiled on every restart (measured:
# process 1 had 0 hits of 8 after a restart). With distinct keys there is no contention, so
# on the CPU backend every process writes its own entries; other backends keep JAX's rule.

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


def tpu_profiler_plugin_loaded() -> bool:
    """Whether libtpu's PJRT plugin, and with it its profiler plugin, is loaded in this process.

    Works around: jax 0.10 registers a loaded plugin's profiler with `jax.profiler` for good
    (xla_bridge.register_plugin_profiler), and libtpu's tracer crashes the process (SIGSEGV in
    PluginTracer::Start, "Unexpected PLUGIN_Profiler_Api size") when a process that trains on CPU
    has loaded libtpu, e.g. for `palm plan`'s abstract TPU devices. profile/capture.py refuses to
    trace then. The public API has no such query (jax._src.lib.xla_client)."""
    from jax._src.lib import xla_client

    return bool(xla_client.pjrt_plugin_loaded("tpu"))
