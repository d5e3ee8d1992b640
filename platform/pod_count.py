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

Ray's side (`worker_counts`; ray/launch.py uses it): ask Ray Train for
between min_pods and pods whole TPU slices. Ray 2.60's Train v2 does the resizing (checked
in its source, ray/train/v2/_internal/execution/scaling_policy/elastic.py): with
`ScalingConfig(num_workers=(min, max), use_tpu=True, topology=..., accelerator_type=...)`
the ElasticScalingPolicy counts the workers the cluster can hold, aligned down to intact
TPU slices (`ray.util.tpu.get_num_tpu_slices`) and starts or restarts the worker group at
that size. A lost pod is a worker failure (counted against `max_failures`), after which the
group restarts on the slices left, from the newest checkpoint. Ray's own resize monitor
(`elastic_resize_monitor_interval_s`) would grow a running group the same way, computing
again every step since that checkpoint; it is off, and `palm run` grows the group instead
after every host saved one agreed step (ray/resize.py), as a planned removal shrinks it
(`palm cluster remove-pod N --drain`).

What Ray does not do: below `min_workers` its policy waits for resources forever (a
NoopDecision each poll). `ray/min_pods.py`'s MinPodsMonitor turns "fewer than min_pods intact
slices for longer than a grace period" into one clear error by stopping the Train controller.

Losing and regaining a pod of the local fake-TPU cluster (`palm cluster remove-pod/add-pod`)
is the cluster's business: platform/cluster/pods.py.
"""

from __future__ import annotations

from palm_platform.topology import SliceShape


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
