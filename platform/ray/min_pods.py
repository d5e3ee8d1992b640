"""An elastic run below `topology.min_pods` for too long: one clear error instead of a wait.

Below `min_workers` Ray 2.60's elastic scaling policy waits for resources forever (a
NoopDecision each poll; pod_count.py has the rest of the story). `MinPodsMonitor` watches the
cluster while an elastic run is up and turns "fewer than min_pods intact slices for longer
than a grace period" into one clear error; launch.py then stops the Train controller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from palm_platform.ray.feasibility import InfeasibleTopologyError, check_feasible
from palm_platform.topology import SliceShape

logger = logging.getLogger(__name__)


class ClusterPoller:
    """A thread that calls `check()` every `poll_s` seconds, from `with` to its end or until
    `check()` returns True; a failed read of the cluster is a warning, never the run's end.
    Subclasses set `_stop`, `_thread` and `poll_s` in their __init__."""

    thread_name = "palm-cluster-poller"
    what = "cluster monitor"
    poll_s: float
    _stop: threading.Event
    _thread: threading.Thread | None

    def check(self) -> bool:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if self.check():
                    return
            except Exception as error:  # noqa: BLE001 - a flaky GCS read must not kill the run
                logger.warning("%s: could not read the cluster: %s", self.what, error)

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def ray_nodes() -> list[dict]:
    import ray

    return ray.nodes()


class MinPodsMonitor(ClusterPoller):
    """Watches the cluster while an elastic run is up; calls `on_lost(message)` once when it
    has held fewer than `request.pods` (= min_pods) matching slices for `grace_s` seconds."""

    thread_name, what = "palm-min-pods", "elastic monitor"

    def __init__(self, request: SliceShape, on_lost: Callable[[str], None], *,
                 grace_s: float, poll_s: float = 2.0,
                 nodes: Callable[[], list[dict]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.request, self.on_lost, self.grace_s, self.poll_s = request, on_lost, grace_s, poll_s
        self._nodes = nodes or ray_nodes
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

