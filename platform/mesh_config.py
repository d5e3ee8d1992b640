"""The job's machine: its TPU topology and how the mesh splits it (jax-free).

`TopologySection` and `MeshSection` are the job file's `topology:` and `mesh:` sections.
They live beside the mesh (mesh.py builds the `(pod, data, model)` Mesh from them) but in a
module of their own because mesh.py imports JAX, and loading a job must not
(`import palm_platform.job` stays light). `TopologySection.shape()` gives the one topology
type the cluster, feasibility and launch take (platform/topology.py's SliceShape).
`compiler_flags` are the libtpu/XLA flags of the job's TPU programs (compiler_flags.py):
`palm plan` compiles with them and `palm run` hands them to the TPU hosts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from palm_platform import compiler_flags
from palm_platform.topology import PodCounts, SliceShape, chips_in_topology

STRICT = ConfigDict(extra="forbid", frozen=True)


class TopologySection(BaseModel, PodCounts):
    """pods x hosts_per_pod x chips_per_host TPU v4 hosts (one pod = one TPU slice); its
    derived counts (chips_per_pod, num_hosts, fewest_pods, elastic) are PodCounts'."""

    model_config = STRICT
    accelerator: Literal["tpu-v4"] = Field(default="tpu-v4", description="TPU generation")
    pods: int = Field(ge=1, description="TPU pods (slices), joined over the data-center network")
    hosts_per_pod: int = Field(ge=1, description="TPU VM hosts per pod (v4: 4 chips each)")
    chips_per_host: int = Field(default=4, ge=1, description="chips per host (v4: 4)")
    ici_topology: str | None = Field(
        default=None, description="chips per pod along x,y,z, e.g. 8x16x24 for a 3072-chip pod"
    )
    local: bool = Field(
        default=False,
        description="run on the local fake-TPU Ray cluster (`palm cluster up`): CPU devices",
    )
    min_pods: int | None = Field(
        default=None, ge=1, description="elastic: keep training on as few as this many pods "
        "when slices are lost, and grow back when they return (default: pods, not elastic)")
    resize_check_s: float = Field(
        default=60, gt=0, description="elastic: seconds between checks for returned pods")
    compiler_flags: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="libtpu/XLA flags by name (no leading --), over the "
        "generation's defaults (platform/compiler_flags.py); `palm plan` compiles with them, "
        "`palm run` sets them as LIBTPU_INIT_ARGS on TPU hosts (not on the local CPU cluster)")

    @property
    def effective_compiler_flags(self) -> dict[str, bool | int | float | str]:
        """This generation's default flags with the job's own over them."""
        return compiler_flags.effective(self.accelerator, self.compiler_flags)

    def shape(self) -> SliceShape:
        """This section as the one topology type the cluster, feasibility and launch take."""
        return SliceShape(self.pods, self.hosts_per_pod, self.chips_per_host,
                          ici_topology=self.ici_topology, min_pods=self.min_pods)

    @model_validator(mode="after")
    def _topology_matches_chips(self) -> TopologySection:
        for name, value in self.compiler_flags.items():
            try:
                compiler_flags.check_name_and_value(name, value)
            except compiler_flags.FlagSyntaxError as error:
                raise ValueError(str(error)) from None
        if self.min_pods is not None and self.min_pods > self.pods:
            raise ValueError(f"min_pods={self.min_pods} exceeds pods={self.pods}; set "
                             f"topology.min_pods between 1 and {self.pods}")
        if self.ici_topology is not None:
            try:
                chips = chips_in_topology(self.ici_topology)
            except ValueError as error:
                raise ValueError(f"ici_topology {error}") from None
            if chips != self.chips_per_pod:
                raise ValueError(
                    f"ici_topology {self.ici_topology} has {chips} chips but hosts_per_pod x "
                    f"chips_per_host = {self.hosts_per_pod} x {self.chips_per_host} = "
                    f"{self.chips_per_pod}; make them agree"
                )
        return self


class MeshSection(BaseModel):
    model_config = STRICT
    model: int = Field(default=1, ge=1, description="tensor-parallel degree inside a pod")
    cross_pod_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="gradient dtype on the data-center network between pods"
    )
