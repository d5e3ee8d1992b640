"""`palm cluster status`: what the recorded local cluster is and whether it is healthy."""

from __future__ import annotations

import json

from palm_platform.cluster.nodes import list_cluster_nodes, node_process
from palm_platform.cluster.state import ClusterState
from palm_platform.topology import (
    POD_TYPE_LABEL,
    SLICE_NAME_LABEL,
    TOPOLOGY_LABEL,
    WORKER_ID_LABEL,
)


def describe(state: ClusterState) -> str:
    """Shape, addresses, one line per node, and a health verdict."""
    lines = [
        f"cluster: {state.pods} pods x {state.hosts_per_pod} hosts x {state.chips_per_host} chips "
        f"(TPU v4 {state.pod_type}, topology {state.topology}, fake: JAX on CPU)",
        f"address: {state.gcs_address}   dashboard: {state.dashboard_url}",
    ]
    from palm_platform.cluster import auth

    mode = auth.cluster_mode(state.dashboard_url)
    lines.append(f"  {auth.SUBMIT_PREFIX if mode == 'token' else ''}ray job submit --address "
                 f"{state.dashboard_url} --working-dir . -- python ...")
    lines.append(auth.describe(mode))
    procs = {n.name: node_process(n) is not None for n in state.nodes}
    try:
        nodes = list_cluster_nodes(state.dashboard_url)
    except Exception as err:  # noqa: BLE001 - status must still print what it knows
        nodes = []
        lines.append(f"state API unreachable at {state.dashboard_url}: {err}")
    alive_hosts = 0
    for node in sorted(nodes, key=_node_order):
        lines.append(_node_line(node))
        alive_hosts += not node["is_head"] and node["state"] == "ALIVE"
    dead = [name for name, ok in procs.items() if not ok]
    health = (
        "healthy" if not dead and alive_hosts == state.pods * state.hosts_per_pod else "DEGRADED"
    )
    lines.append(
        f"health: {health}: {alive_hosts}/{state.pods * state.hosts_per_pod} TPU hosts alive"
        + (f"; recorded processes gone: {', '.join(dead)}" if dead else "")
    )
    return "\n".join(lines)


def _node_order(node: dict) -> tuple:
    """Head first, then hosts by slice and worker id."""
    return (not node["is_head"], node["labels"].get(SLICE_NAME_LABEL, ""),
            node["labels"].get(WORKER_ID_LABEL, ""))


def _node_line(node: dict) -> str:
    labels, res = node["labels"], node["resources"]
    if node["is_head"]:
        return f"  head        {node['state']:<6} cpus={res.get('CPU', 0):g}"
    tpu_res = {k: v for k, v in res.items() if "TPU" in k}
    return (
        f"  {labels.get(SLICE_NAME_LABEL, '?')}/w{labels.get(WORKER_ID_LABEL, '?'):<4}"
        f"{node['state']:<6} {json.dumps(tpu_res)} pod-type={labels.get(POD_TYPE_LABEL)} "
        f"topology={labels.get(TOPOLOGY_LABEL)}"
    )
