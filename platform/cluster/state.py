"""The local cluster's state file and the ports its nodes are given.

`palm cluster up` records what it started (each node's PID and start time, the GCS and
dashboard addresses) in `<state dir>/cluster.json`, so that `down` stops exactly those
processes and `palm run` finds the cluster again. Every Ray port of every node is picked
free, so several nodes, and several engineers' clusters, share one machine.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from palm_platform.atomic_write import write_atomic
from palm_platform.topology import SliceShape

DEFAULT_STATE_DIR = Path.home() / ".palm"
STATE_FILE_NAME = "cluster.json"
DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
LOCALHOST = "127.0.0.1"


@dataclass
class NodeRecord:
    """One `ray start --block` process we started; (pid, create_time) guards PID reuse."""

    name: str
    pid: int
    create_time: float
    log_path: str
    slice_name: str | None = None
    worker_id: int | None = None
    node_manager_port: int | None = None  # the raylet's gRPC port (auth checks reach it)


@dataclass
class ClusterState:
    pods: int
    hosts_per_pod: int
    chips_per_host: int
    topology: str
    pod_type: str
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    object_store_mb: int
    nodes: list[NodeRecord] = field(default_factory=list)
    # "token" or "disabled": the mode its nodes started in, so add-pod starts hosts alike
    # (None: a state file from before token mode was the default).
    auth_mode: str | None = None

    @property
    def shape(self) -> SliceShape:
        return SliceShape(self.pods, self.hosts_per_pod, self.chips_per_host)


def state_path(run_state_dir: str | os.PathLike | None) -> Path:
    return Path(run_state_dir or DEFAULT_STATE_DIR).expanduser() / STATE_FILE_NAME


class ClusterStateError(ValueError):
    """A state file that is not one `palm cluster up` wrote (torn, edited, another version)."""


def load_state(path: Path) -> ClusterState | None:
    if not path.exists():
        return None
    try:
        if path.stat().st_size > 1 << 20:  # a state file is a few KB
            raise ValueError("larger than 1 MiB")
        raw = json.loads(path.read_bytes().decode("utf-8"))
        nodes = [NodeRecord(**n) for n in raw.pop("nodes")]
        if not all(type(n.pid) is int and isinstance(n.create_time, int | float) for n in nodes):
            raise ValueError("a node's pid or create_time is not a number")
        return ClusterState(**raw, nodes=nodes)
    except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as error:
        from palm_platform.yaml_safe import one_line

        raise ClusterStateError(one_line(
            f"{path}: not a palm cluster state file ({type(error).__name__}: {error}). Fix: "
            "stop the Ray processes it started, if any, delete the file and `palm cluster up`",
            400)) from None


def save_state(path: Path, state: ClusterState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(state), indent=2))  # a reader never sees half of it


# --- ports -----------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
            return True
        except OSError:
            return False


# Ports handed out by this process: a port picked free and released can be picked again
# by the next call (the OS reuses it), and two Ray components given one port fail to start.
_handed_out: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def preferred_port(default: int) -> int:
    return default if _port_free(default) else free_port()


def node_port_args() -> list[str]:
    """Per-node ports, all picked free, so several nodes (and clusters) share one machine."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        # 0: each worker binds a port the OS picks, so nodes never collide on the range.
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]
