"""How many pods a run trains on: elastic jobs that lose a pod go on with fewer, then grow back.

A job names `topology.pods` (full size) and `topology.min_pods` (the fewest it may train
on). Two sides of that one decision live here:

The run's side (pure Python, no JAX; job validation, `palm plan` and the loop use it). On
every (re)start the worker derives the pod count from the devices it was given (whole
slices only), and keeps the training mathematics unchanged:

- the global batch of step k is the same sequences (the pipeline's batch = f(step));
- each pod keeps the microbatch it has at full size (same per-chip memory), so with fewer
  pods the number of gradient-accumulation microbatches grows: 2 pods x 1 -> 1 pod x 2.

The gradient is then the mean over the same sequences; only the order of the sums differs
(inside a pod's microbatch scan instead of across pods), so results agree to float
rounding, and two runs with the same resize events are bitwise equal.

Ray's side (`worker_counts`, `MinPodsMonitor`; launch.py uses them): ask Ray Train for
between min_pods and pods whole TPU slices. Ray 2.60's Train v2 does the resizing (checked
in its source, ray/train/v2/_internal/execution/scaling_policy/elastic.py): with
`ScalingConfig(num_workers=(min, max), use_tpu=True, topology=..., accelerator_type=...)`
the ElasticScalingPolicy counts the workers the cluster can hold, aligned down to intact
TPU slices (`ray.util.tpu.get_num_tpu_slices`), starts or restarts the worker group at that
size, and while it runs re-checks every `elastic_resize_monitor_interval_s` seconds and
restarts it larger when slices return. A lost pod is a worker failure (counted against
`max_failures`), after which the group restarts on the slices left.

What Ray does not do: below `min_workers` its policy waits for resources forever (a
NoopDecision each poll). `MinPodsMonitor` turns "fewer than min_pods intact slices for
longer than a grace period" into one clear error by stopping the Train controller.

Losing and regaining a pod of the local fake-TPU cluster (`palm cluster remove-pod/add-pod`)
is the cluster's business: platform/cluster/pods.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from palm_platform.topology import SliceShape

logger = logging.getLogger(__name__)


class ElasticShapeError(ValueError):
    """The worker group or the batch schedule cannot hold this pod count."""


def pods_in_group(num_devices: int, chips_per_pod: int, min_pods: int, max_pods: int) -> int:
    """Pods in a worker group of `num_devices` devices; whole slices within [min, max]."""
    if num_devices % chips_per_pod:
        raise ElasticShapeError(
            f"the worker group has {num_devices} devices, not a whole number of "
            f"{chips_per_pod}-chip pods (a partial slice cannot train)")
    pods = num_devices // chips_per_pod
    if not min_pods <= pods <= max_pods:
        raise ElasticShapeError(
            f"the worker group holds {pods} pod(s); the job allows {min_pods} to {max_pods} "
            "(topology.min_pods .. topology.pods)")
    return pods


def microbatches_at(batch_size: int, microbatch_sequences: int | None, full_pods: int,
                    pods: int, data_parallel: int) -> int:
    """Gradient-accumulation microbatches for `batch_size` global sequences on `pods` pods.

    `microbatch_sequences` is the job's global microbatch at full size (None: one
    microbatch); each pod keeps its share of it, so the global microbatch scales with pods.
    """
    full_micro = microbatch_sequences or batch_size
    per_pod = full_micro // full_pods  # the job validates full_micro % (full_pods * data) == 0
    global_micro = per_pod * pods
    if batch_size % (pods * data_parallel) or batch_size % global_micro:
        raise ElasticShapeError(
            f"{pods} pod(s) cannot hold a batch of {batch_size} sequences in microbatches of "
            f"{per_pod} sequences per pod ({per_pod} x {pods} does not divide {batch_size})")
    return batch_size // global_micro


def check_pod_counts(batch_sizes: list[int], microbatch_sequences: int | None, full_pods: int,
                     min_pods: int, data_parallel: int) -> str | None:
    """The first problem with training at any pod count in [min_pods, full_pods), or None."""
    for pods in range(min_pods, full_pods):
        for batch_size in batch_sizes:
            try:
                microbatches_at(batch_size, microbatch_sequences, full_pods, pods, data_parallel)
            except ElasticShapeError as error:
                return str(error)
    return None



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
        # Imported here: the run's side of this module (job validation, the loop) must not
        # load the orchestration package.
        from palm_platform.ray.feasibility import InfeasibleTopologyError, check_feasible

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
