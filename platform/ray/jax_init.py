"""Bound `jax.distributed.initialize` on Ray Train workers, so a hang becomes a restart.

Ray 2.60's JaxConfig calls `jax.distributed.initialize(addr, n, rank)` with JAX's default
`initialization_timeout` (300 s) and waits on it without a timeout, and offers no knob for
it. A host that never joins (or stale MEGASCALE_* variables) stalls the worker group.

`BoundedJaxConfig` is JaxConfig plus one step before Ray's own set-up: on every worker it
wraps `jax.distributed.initialize` with our timeout and a message that says what happened.
The failure then surfaces in Ray Train as a worker-group start-up failure, which its
FailureConfig turns into a restart (counted against `controller_failure_limit`).
(A runtime_env `worker_process_setup_hook` would be simpler, but Ray applies it only to the
job-level runtime env from `ray.init`, not to Ray Train's worker runtime env.)
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

from ray.train.v2.jax.config import JaxConfig, _JaxBackend


def bound_jax_initialize(timeout_s: int, heartbeat_timeout_s: int = 100) -> None:
    """Make this process's `jax.distributed.initialize` default to `timeout_s`, with a clear error.

    Also: JAX's coordination-service heartbeat timeout from the job (longer than its hang
    timeout, so the watchdog names a stuck host before JAX aborts every peer with SIGABRT),
    and the coordinator bound to loopback when its address is loopback (JAX binds all
    interfaces by default; the local cluster keeps everything on 127.0.0.1).
    """
    import jax

    original = getattr(jax.distributed.initialize, "_palm_original", jax.distributed.initialize)

    @functools.wraps(original)
    def initialize(*args, initialization_timeout: int = timeout_s, **kwargs):
        kwargs.setdefault("heartbeat_timeout_seconds", heartbeat_timeout_s)
        address = kwargs.get("coordinator_address") or (args[0] if args else None)
        if address and address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
            kwargs.setdefault("coordinator_bind_address", f"127.0.0.1:{address.rsplit(':', 1)[1]}")
        try:
            return original(*args, initialization_timeout=initialization_timeout, **kwargs)
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


@dataclass
class BoundedJaxConfig(JaxConfig):
    """JaxConfig whose `jax.distributed.initialize` gives up after `initialization_timeout_s`."""

    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100

    @property
    def backend_cls(self):
        return _BoundedJaxBackend


class _BoundedJaxBackend(_JaxBackend):
    def on_start(self, worker_group, backend_config: BoundedJaxConfig) -> None:
        if len(worker_group) == 1:
            # One host needs no jax.distributed; on CPU, initialising it routes the
            # in-process collectives through gloo and made every step ~3x slower
            # (benchmarks/bench_run.py).
            return
        if backend_config.use_tpu or backend_config.use_gpu:
            worker_group.execute(bound_jax_initialize, backend_config.initialization_timeout_s,
                                 backend_config.heartbeat_timeout_s)
        super().on_start(worker_group, backend_config)
