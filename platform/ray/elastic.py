"""Elastic pods on Ray: ask Ray Train for between min_pods and pods whole TPU slices.

Ray 2.60's Train v2 does the resizing (checked in its source,
ray/train/v2/_internal/execution/scaling_policy/elastic.py): with
`ScalingConfig(num_workers=(min, max), use_tpu=True, topology=..., accelerator_type=...)`
the ElasticScalingPolicy counts the workers the cluster can hold, aligned down to intact
TPU slices (`ray.util.tpu.get_num_tpu_slices`), starts or restarts the worker group at that
size, and while it runs re-checks every `elastic_resize_monitor_interval_s` seconds and
restarts it larger when slices return. A lost pod is a worker failure (counted against
`max_failures`), after which the group restarts on the slices left. The JAX side (mesh,
microbatches, resharded restore) is the Trainer's: platform/elastic.py.

What Ray does not do: below `min_workers` its policy waits for resources forever (a
NoopDecision each poll). `MinPodsMonitor` turns "fewer than min_pods intact slices for
longer than a grace period" into one clear error by stopping the Train controller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from palm_platform.ray.feasibility import InfeasibleTopologyError, check_feasible
from palm_platform.ray.topology import SliceShape

logger = logging.getLogger(__name__)


def worker_counts(shape: SliceShape) -> int | tuple[int, int]:
    """ScalingConfig.num_workers: fixed `pods` slices, or (min, max) workers when elastic."""
    if not shape.elastic:
        return shape.num_hosts
    return (shape.fewest_pods * shape.hosts_per_pod, shape.num_hosts)


class MinPodsMonitor:
    """Watches the cluster while an elastic run is up; calls `on_lost(message)` once when it
    has held fewer than `request.pods` (= min_pods) matching slices for `grace_s` seconds."""

    def __init__(self, request: SliceShape, on_lost: Callable[[str], None], *,
                 grace_s: float, poll_s: float = 2.0,
                 nodes: Callable[[], list[dict]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.request, self.on_lost, self.grace_s, self.poll_s = request, on_lost, grace_s, poll_s
        self._nodes = nodes or _ray_nodes
        self._clock = clock
        self._short_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def check(self) -> bool:
        """One poll; True once the run was given up on."""
        if self.error is not None:
            return True
        try:
            check_feasible(self._nodes(), self.request)
            self._short_since = None
            return False
        except InfeasibleTopologyError as short:
            now = self._clock()
            if self._short_since is None:
                self._short_since = now
                logger.warning("fewer than topology.min_pods=%d pods alive; giving up in %.0f s "
                               "unless they return", self.request.pods, self.grace_s)
            if now - self._short_since < self.grace_s:
                return False
            self.error = (f"fewer than topology.min_pods={self.request.pods} pod(s) for "
                          f"{self.grace_s:.0f} s, so training cannot go on: {short}")
        self.on_lost(self.error)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if self.check():
                    return
            except Exception as error:  # noqa: BLE001 - a flaky GCS read must not kill the run
                logger.warning("elastic monitor: could not read the cluster: %s", error)

    def __enter__(self) -> MinPodsMonitor:
        self._thread = threading.Thread(target=self._loop, name="palm-min-pods", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _ray_nodes() -> list[dict]:
    import ray

    return ray.nodes()
