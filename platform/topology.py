"""TPU v4 slice shapes as Ray 2.60's TPU utilities spell them.

One place that turns "H hosts x C chips per host" into the strings Ray matches on, so the
fake cluster (cluster/) and the launcher (ray/launch.py) can never disagree:

- topology: chips along (x, y, z), e.g. 8 chips -> "2x2x2"; it must be in Ray's
  `VALID_TPU_TOPOLOGY["v4"]` (read through compat/ray.py), or `ScalingConfig` /
  `SlicePlacementGroup` reject it.
- pod type: "v4-<TensorCores>", and a v4 chip has 2 TensorCores, so 8 chips -> "v4-16"
  (Ray's `infer_tpu_pod_type_from_topology`). Worker 0 of a slice carries the resource
  "TPU-v4-16-head", which `reserve_tpu_slice` claims to gang-schedule that slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

ACCELERATOR_TYPE = "TPU-V4"
CORES_PER_V4_CHIP = 2

# Node labels Ray reads on TPU hosts (ray._raylet.RAY_NODE_TPU_*_KEY).
SLICE_NAME_LABEL = "ray.io/tpu-slice-name"
WORKER_ID_LABEL = "ray.io/tpu-worker-id"
POD_TYPE_LABEL = "ray.io/tpu-pod-type"
TOPOLOGY_LABEL = "ray.io/tpu-topology"
# Our own label: the node is a CPU process posing as a TPU host (JAX must run on CPU).
FAKE_TPU_LABEL = "palm.dev/fake-tpu"


def parse_topology(topology: str) -> tuple[int, int, int]:
    """Chips along (x, y, z) of an "AxBxC" slice topology: the one parser of that string."""
    dims = topology.lower().split("x")
    if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
        raise ValueError(f"{topology!r} is not AxBxC")
    return int(dims[0]), int(dims[1]), int(dims[2])


def chips_in_topology(topology: str) -> int:
    return math.prod(parse_topology(topology))


def v4_topology_for_chips(num_chips: int) -> str:
    """The most cube-like valid v4 topology with `num_chips` chips ("2x2x2" for 8)."""
    from palm_platform.compat.ray import v4_topologies

    known = v4_topologies()
    candidates = [t for t in known if chips_in_topology(t) == num_chips]
    if not candidates:
        valid = sorted({chips_in_topology(t) for t in known})
        raise ValueError(
            f"no TPU v4 topology has {num_chips} chips; chips per slice "
            f"(hosts_per_pod x chips_per_host) must be one of {valid[:8]}..."
        )
    return min(candidates, key=lambda t: (max(parse_topology(t)), t))


def v4_pod_type(topology: str) -> str:
    """Pod type of a topology ("2x2x2" -> "v4-16"): v4 pod types count TensorCores, two per chip."""
    return f"v4-{CORES_PER_V4_CHIP * chips_in_topology(topology)}"


class PodCounts:
    """The arithmetic of `pods x hosts_per_pod x chips_per_host` (and `min_pods`), written once.

    Shared by SliceShape and the job's `topology:` section (mesh_config.TopologySection),
    which validates the same numbers before it produces a SliceShape (`shape()`); a plain
    mixin, and the classes that use it declare `pods`, `hosts_per_pod`, `chips_per_host` and
    `min_pods` themselves (annotations here would reorder the pydantic section's fields).
    """

    @property
    def chips_per_pod(self) -> int:
        return self.hosts_per_pod * self.chips_per_host

    @property
    def num_hosts(self) -> int:
        return self.pods * self.hosts_per_pod

    @property
    def fewest_pods(self) -> int:
        """The fewest pods the run trains on (`min_pods`, default all of them)."""
        return self.pods if self.min_pods is None else self.min_pods

    @property
    def elastic(self) -> bool:
        return self.fewest_pods < self.pods


@dataclass(frozen=True)
class SliceShape(PodCounts):
    """The one topology type: pods x hosts_per_pod x chips_per_host TPU v4 hosts, one pod per
    TPU slice. Built from the job (`TopologySection.shape()`) or `palm cluster up`'s flags,
    and passed as is to the local cluster, the feasibility check and `launch()`.

    `ici_topology` None means the most cube-like v4 shape of the pod's chips; `min_pods`
    (elastic jobs) the fewest pods the run may go on with, None meaning all of them.
    """

    pods: int
    hosts_per_pod: int
    chips_per_host: int
    ici_topology: str | None = None
    min_pods: int | None = None
    accelerator_type: str = "TPU-V4"

    def __post_init__(self) -> None:
        for field in ("pods", "hosts_per_pod", "chips_per_host"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.ici_topology is None:
            v4_topology_for_chips(self.chips_per_pod)  # fail at construction, not at first use
        else:
            parse_topology(self.ici_topology)  # whether it agrees with the chips: feasibility.py

    @property
    def topology(self) -> str:
        if self.ici_topology is not None:
            return self.ici_topology.lower()
        return v4_topology_for_chips(self.chips_per_pod)

    @property
    def pod_type(self) -> str:
        return v4_pod_type(self.topology)

    @property
    def head_resource(self) -> str:
        """The resource only worker 0 of each slice has (what Ray reserves a slice by)."""
        return f"TPU-{self.pod_type}-head"

    def smallest(self) -> SliceShape:
        """The least this shape may run on: `fewest_pods` pods of the same slices."""
        return replace(self, pods=self.fewest_pods, min_pods=None)

    def slice_name(self, pod: int) -> str:
        return f"pod-{pod}"

    def describe(self) -> str:
        return (
            f"{self.pods} pods x {self.hosts_per_pod} hosts x {self.chips_per_host} chips of "
            f"{self.accelerator_type} topology {self.topology} (pod type {self.pod_type})"
        )


def ensure_ray_accepts_v4_topology(topology: str) -> bool:
    """Add a full-pod v4 shape that Ray 2.60's table lacks; True when it had to.

    Ray's VALID_TPU_TOPOLOGY["v4"] stops at 12x12x16 (2304 chips), but TPU v4 slices go up
    to a full 16x16x16 pod, and PaLM trained on 3072-chip (12x16x16) pods. A shape of three
    multiples of 4 (at most 16) is a real v4 slice; anything else is left for Ray to reject.
    """
    from palm_platform.compat.ray import register_v4_topology, v4_topologies

    if topology in v4_topologies():
        return False
    try:
        dims = parse_topology(topology)
    except ValueError:
        return False
    if all(d % 4 == 0 and 4 <= d <= 16 for d in dims):
        register_v4_topology(topology)
        return True
    return False
