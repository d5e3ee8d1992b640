"""Does the Ray cluster have the TPU slices a job asks for? One clear answer, before we wait.

Ray Train never says "infeasible": it waits for the placement, times out, and retries the
worker-group start (unlimited retries by default). So we compare the request with the
nodes' TPU resources and labels first, exactly as Ray's slice reservation will match them
(`reserve_tpu_slice` claims worker 0's "TPU-<pod type>-head" resource and label
ray.io/tpu-pod-type; the slice's hosts are then found by ray.io/tpu-slice-name; every
bundle also asks for "accelerator_type:<type>").
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from palm_platform.topology import (
    FAKE_TPU_LABEL,
    POD_TYPE_LABEL,
    SLICE_NAME_LABEL,
    TOPOLOGY_LABEL,
    WORKER_ID_LABEL,
    SliceShape,
    chips_in_topology,
)


class InfeasibleTopologyError(RuntimeError):
    """The cluster cannot hold the job's TPU slices; the message says what is missing."""


@dataclass(frozen=True)
class SliceView:
    """What the cluster offers under one ray.io/tpu-slice-name."""

    name: str
    pod_type: str | None
    topology: str | None
    hosts: int
    tpu_per_host: tuple[float, ...]
    has_head: bool
    has_accelerator_type: bool
    fake: bool


def tpu_slices(nodes: list[dict], accelerator_type: str) -> list[SliceView]:
    """Group alive TPU nodes (`ray.nodes()` dicts) by slice name."""
    by_slice: dict[str, list[dict]] = defaultdict(list)
    for node in nodes:
        if node.get("Alive") and (node.get("Resources") or {}).get("TPU", 0) > 0:
            labels = node.get("Labels") or {}
            by_slice[labels.get(SLICE_NAME_LABEL) or node["NodeID"][:8]].append(node)
    views = []
    for name, members in sorted(by_slice.items()):
        labels = [m.get("Labels") or {} for m in members]
        views.append(
            SliceView(
                name=name,
                pod_type=labels[0].get(POD_TYPE_LABEL),
                topology=labels[0].get(TOPOLOGY_LABEL),
                hosts=len(members),
                tpu_per_host=tuple(m["Resources"]["TPU"] for m in members),
                has_head=any(
                    lab.get(WORKER_ID_LABEL) == "0"
                    and any(k.endswith("-head") for k in m["Resources"])
                    for lab, m in zip(labels, members, strict=True)
                ),
                has_accelerator_type=all(
                    f"accelerator_type:{accelerator_type}" in m["Resources"] for m in members
                ),
                fake=all(lab.get(FAKE_TPU_LABEL) == "true" for lab in labels),
            )
        )
    return views


def matches(view: SliceView, request: SliceShape) -> bool:
    return (
        view.pod_type == request.pod_type
        and view.hosts == request.hosts_per_pod
        and all(tpu >= request.chips_per_host for tpu in view.tpu_per_host)
        and view.has_head
        and view.has_accelerator_type
    )


def _why_not(view: SliceView, request: SliceShape) -> str:
    reasons = []
    if view.pod_type != request.pod_type:
        reasons.append(f"pod type {view.pod_type} topology {view.topology}")
    if view.hosts != request.hosts_per_pod:
        reasons.append(f"{view.hosts} hosts")
    if any(tpu < request.chips_per_host for tpu in view.tpu_per_host):
        reasons.append(f"TPU per host {min(view.tpu_per_host):g}")
    if not view.has_head:
        reasons.append("no worker 0 with a TPU-<pod type>-head resource")
    if not view.has_accelerator_type:
        reasons.append(f"no accelerator_type:{request.accelerator_type} resource")
    return f"{view.name}: " + ", ".join(reasons)


def check_feasible(nodes: list[dict], request: SliceShape) -> list[SliceView]:
    """The matching slices, or InfeasibleTopologyError naming what is missing and the fix."""
    chips = chips_in_topology(request.topology)
    if chips != request.hosts_per_pod * request.chips_per_host:
        raise InfeasibleTopologyError(
            f"topology {request.topology} has {chips} chips per pod but hosts_per_pod x "
            f"chips_per_host = {request.hosts_per_pod} x {request.chips_per_host} = "
            f"{request.hosts_per_pod * request.chips_per_host}. Fix: make them agree in the job "
            "file."
        )
    views = tpu_slices(nodes, request.accelerator_type)
    matching = [v for v in views if matches(v, request)]
    if len(matching) >= request.pods:
        return matching
    have = ", ".join(f"{v.name}: {v.hosts} hosts" for v in matching) or "none"
    others = "; ".join(_why_not(v, request) for v in views if v not in matching)
    message = (
        f"job needs {request.describe()}; the cluster has {len(matching)} matching "
        f"slice{'s' if len(matching) != 1 else ''} ({have})"
        + (f"; other TPU slices: {others}" if others else "")
        + ". Fix: `palm cluster down && palm cluster up "
        f"--pods {request.pods} --hosts-per-pod {request.hosts_per_pod} "
        f"--chips-per-host {request.chips_per_host}` for the local cluster, add TPU slices to "
        "the Ray cluster, or change topology in the job file."
    )
    raise InfeasibleTopologyError(message)
