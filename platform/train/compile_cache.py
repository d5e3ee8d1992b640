"""JAX's persistent compilation cache for a run, and a count of its hits and misses.

    cache = CompileCache.enable(directory)    # before the process compiles its train step
    ...                                       # jit, lower, compile as usual
    cache.counts()                            # {"hits": 3, "misses": 1, "saved_s": 41.2}

A restarted worker group (and a rerun of the same job) compiles the same programs again;
with the cache every host loads the executables the first attempt wrote instead of
recompiling (a 2 s compile became 0.15 s here). Only JAX process 0 writes entries (JAX's
own rule, so a shared gs:// cache is never written concurrently); every process reads them.
On CPU each process's key differs, so there every process writes its own entries
(compat/jax.py, cache_writes_from_every_process_on_cpu).

JAX decides per key, not per process, so the cache can be switched on at any time before
the compiles it should serve. The counts come from JAX's public monitoring events
(`jax.monitoring`): a "compile request that uses the cache" is a hit or a miss.

What is in a cache key (jax/_src/cache_key.py, jax 0.10): the program with debug info
stripped, the jaxlib version, the backend's platform and platform version, XLA_FLAGS and
LIBTPU_INIT_ARGS, the compile options (device assignment included) and the fingerprint
of the devices' topology. A changed model, mesh, batch shape, library version or XLA flag
therefore misses, safely.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import jax

log = logging.getLogger(__name__)

REQUESTS_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
HITS_EVENT = "/jax/compilation_cache/cache_hits"
SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"
OFF = "off"


class CompileCache:
    """Counts this process's persistent-cache requests and hits from JAX's events."""

    _lock = threading.Lock()
    _active: CompileCache | None = None
    # When set, every run in this process caches here instead of in its own directory ("off"
    # stays off). The test session sets one (tests/conftest.py), so its many in-process runs of
    # the same small jobs compile each program once instead of once per run folder. A class
    # setting, not an environment variable: processes it starts keep their own caches.
    shared_directory: str | None = None

    def __init__(self, directory: str | None):
        self.directory = directory
        self.requests = 0
        self.hits = 0
        self.saved_s = 0.0

    @classmethod
    def enable(cls, directory: str | Path | None) -> CompileCache:
        """Point JAX's cache at `directory` (local or gs://; None or "off": no cache)."""
        from jax.experimental.compilation_cache import compilation_cache

        with cls._lock:
            if cls._active is None:  # JAX keeps listeners for the life of the process
                jax.monitoring.register_event_listener(cls._on_event)
                jax.monitoring.register_event_duration_secs_listener(cls._on_duration)
            directory = (None if directory in (None, OFF)
                         else str(cls.shared_directory or directory))
            if directory != jax.config.jax_compilation_cache_dir:
                # The cache object is built once, from the directory set at first use;
                # reset it so a second run in one process (tests) uses its own directory.
                compilation_cache.reset_cache()
                jax.config.update("jax_compilation_cache_dir", directory)
            if directory is not None:
                if "://" not in directory:
                    Path(directory).mkdir(parents=True, exist_ok=True)
                # Every compile is cached: on CPU a step compiles in seconds, and a
                # restart pays for every one of them.
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
                jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
            cls._active = cache = cls(directory)
        return cache

    @classmethod
    def _on_event(cls, event: str, **_kwargs) -> None:
        cache = cls._active
        if cache is None or cache.directory is None:  # JAX asks a missing cache too
            return
        if event == REQUESTS_EVENT:
            cache.requests += 1
        elif event == HITS_EVENT:
            cache.hits += 1

    @classmethod
    def _on_duration(cls, event: str, duration: float, **_kwargs) -> None:
        cache = cls._active
        if cache is not None and cache.directory is not None and event == SAVED_EVENT:
            cache.saved_s += max(duration, 0.0)

    def event_fields(self) -> dict:
        """The counts as the `compiled` and `goodput` events name them."""
        counts = self.counts()
        return {"cache_hits": counts["hits"], "cache_misses": counts["misses"]}

    def counts(self) -> dict:
        """Hits, misses and compile seconds saved so far in this process."""
        return {"hits": self.hits, "misses": self.requests - self.hits,
                "saved_s": round(self.saved_s, 1)}
