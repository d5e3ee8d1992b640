"""`palm cluster up|down|status`: a local Ray cluster whose nodes pose as TPU v4 hosts.

Each node is one `ray start --block` process in its own session (so its process group is
its own): a head with no CPUs (drivers, the Train controller and the dashboard live there)
and one node per fake TPU host with one CPU, the TPU resources, labels and TPU_* variables
a GKE TPU host has (see topology.py), so Ray Train's real TPU code path places workers on
them. JAX inside those workers runs on CPU (launch.py sets that).

The processes outlive the command, like `ray start`; their PIDs, start times and ports go
to a state file, and `down` stops exactly those process groups. It never runs `ray stop`,
which would kill every Ray process on the machine, another user's cluster included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from palm_platform.ray.topology import (
    ACCELERATOR_TYPE,
    FAKE_TPU_LABEL,
    POD_TYPE_LABEL,
    SLICE_NAME_LABEL,
    TOPOLOGY_LABEL,
    WORKER_ID_LABEL,
    SliceShape,
)

DEFAULT_STATE_DIR = Path.home() / ".palm"
STATE_FILE_NAME = "cluster.json"
DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
LOCALHOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0


@dataclass
class NodeRecord:
    """One `ray start --block` process we started; (pid, create_time) guards PID reuse."""

    name: str
    pid: int
    create_time: float
    log_path: str
    slice_name: str | None = None
    worker_id: int | None = None


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

    @property
    def shape(self) -> SliceShape:
        return SliceShape(self.pods, self.hosts_per_pod, self.chips_per_host)


def state_path(run_state_dir: str | os.PathLike | None) -> Path:
    return Path(run_state_dir or DEFAULT_STATE_DIR).expanduser() / STATE_FILE_NAME


def load_state(path: Path) -> ClusterState | None:
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    nodes = [NodeRecord(**n) for n in raw.pop("nodes")]
    return ClusterState(**raw, nodes=nodes)


def save_state(path: Path, state: ClusterState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)  # atomic: a reader never sees half a state file


def ray_address_from_state(run_state_dir: str | os.PathLike | None = None) -> str | None:
    """The GCS address of the recorded local cluster, or None when none is recorded/alive."""
    state = load_state(state_path(run_state_dir))
    if state is None or not cluster_alive(state):
        return None
    return state.gcs_address


# --- processes -------------------------------------------------------------------------


def _process(record: NodeRecord):
    """The live psutil.Process for a record, or None (gone, or the PID was reused)."""
    import psutil

    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def _dashboard_up(dashboard_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{dashboard_url}/api/version", timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


def cluster_alive(state: ClusterState) -> bool:
    return all(_process(n) is not None for n in state.nodes) and _dashboard_up(state.dashboard_url)


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


def _free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _preferred_port(default: int) -> int:
    return default if _port_free(default) else _free_port()


def _node_ports() -> list[str]:
    """Per-node ports, all picked free, so several nodes (and clusters) share one machine."""
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        # 0: each worker binds a port the OS picks, so nodes never collide on the range.
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]


def _start_node(args: list[str], env: dict[str, str], log_path: Path, name: str) -> NodeRecord:
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` signals exactly it
        )
    return NodeRecord(name, proc.pid, psutil.Process(proc.pid).create_time(), str(log_path))


def _wait_for(predicate, timeout_s: float, what: str, nodes: list[NodeRecord]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [n for n in nodes if _process(n) is None]
        if dead:
            raise RuntimeError(
                f"ray node {dead[0].name} exited while waiting for {what}; see {dead[0].log_path}"
            )
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _alive_node_count(dashboard_url: str) -> int:
    try:
        return sum(1 for n in list_cluster_nodes(dashboard_url) if n["state"] == "ALIVE")
    except Exception:  # the state API answers only once the dashboard is fully up
        return 0


def list_cluster_nodes(dashboard_url: str) -> list[dict]:
    """Nodes as plain dicts (name, state, is_head, resources, labels) from the state API."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=dashboard_url, detail=True, raise_on_missing_output=False)
    return [
        {
            "node_id": n.node_id,
            "state": n.state,
            "is_head": n.is_head_node,
            "resources": dict(n.resources_total or {}),
            "labels": dict(n.labels or {}),
        }
        for n in nodes
    ]


def up(
    shape: SliceShape, *, object_store_mb: int = 150, run_state_dir: str | os.PathLike | None = None
) -> ClusterState:
    """Start the head and one node per fake TPU host; return the recorded state."""
    path = state_path(run_state_dir)
    # A short temp dir: Ray's unix sockets live under it and paths are capped at 107 bytes.
    temp_dir = f"/tmp/palm-ray-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    gcs_port = _preferred_port(DEFAULT_GCS_PORT)
    dashboard_port = _preferred_port(DEFAULT_DASHBOARD_PORT)
    state = ClusterState(
        pods=shape.pods,
        hosts_per_pod=shape.hosts_per_pod,
        chips_per_host=shape.chips_per_host,
        topology=shape.topology,
        pod_type=shape.pod_type,
        gcs_address="",  # known once the head is up: Ray binds the machine's IP, not 127.0.0.1
        dashboard_url=f"http://{LOCALHOST}:{dashboard_port}",
        temp_dir=temp_dir,
        object_store_mb=object_store_mb,
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "TPU_"))}
    base_env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's log monitor also streams libtpu's log folder (TPU_LOG_DIR, else /tmp/tpu_logs) to
    # every driver. On a laptop that folder holds the logs of every libtpu user on the machine
    # (`palm plan`), thousands of lines: give the fake TPU hosts a folder of their own.
    tpu_log_dir = Path(temp_dir) / "tpu_logs"
    tpu_log_dir.mkdir(parents=True, exist_ok=True)
    base_env["TPU_LOG_DIR"] = str(tpu_log_dir)
    # Jobs submitted to this cluster (`ray job submit -- palm run ...`, or an executable job
    # file whose shebang runs `palm`) find this environment's `palm` and `python` first.
    bin_dir = str(Path(sys.executable).parent)
    base_env["PATH"] = os.pathsep.join([bin_dir, base_env.get("PATH", "")])
    common = [
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    logs = path.parent / "cluster-logs"
    try:
        head = _start_node(
            [
                "--head",
                f"--port={gcs_port}",
                "--num-cpus=0",
                f"--dashboard-host={LOCALHOST}",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
                *common,
                *_node_ports(),
            ],
            base_env,
            logs / "head.log",
            "head",
        )
        state.nodes.append(head)
        save_state(path, state)  # record as we go: a failed `up` is still cleaned by `down`
        # `ray start` writes the GCS address file last, once the head is fully up.
        address_file = Path(temp_dir) / "ray_current_cluster"
        address_file.unlink(missing_ok=True)
        _wait_for(
            lambda: address_file.exists() and _dashboard_up(state.dashboard_url),
            START_TIMEOUT_S,
            "the head",
            state.nodes,
        )
        state.gcs_address = address_file.read_text().strip()
        save_state(path, state)
        # One host at a time: on a 2-core machine, raylets registering together overload the
        # GCS past Ray's 30 s node start-up deadline.
        for pod in range(shape.pods):
            for worker_id in range(shape.hosts_per_pod):
                state.nodes.append(
                    _start_host(shape, pod, worker_id, state, base_env, common, logs)
                )
                save_state(path, state)
                expected = len(state.nodes)
                _wait_for(
                    lambda expected=expected: _alive_node_count(state.dashboard_url) >= expected,
                    START_TIMEOUT_S,
                    f"{expected} alive Ray nodes",
                    state.nodes,
                )
    except BaseException:
        stop_nodes(state.nodes)
        path.unlink(missing_ok=True)
        raise
    return state


def _start_host(
    shape: SliceShape,
    pod: int,
    worker_id: int,
    state: ClusterState,
    base_env: dict[str, str],
    common: list[str],
    logs: Path,
) -> NodeRecord:
    slice_name = shape.slice_name(pod)
    resources: dict[str, float] = {
        "TPU": shape.chips_per_host,
        f"accelerator_type:{ACCELERATOR_TYPE}": 1,
    }
    if worker_id == 0:
        resources[shape.head_resource] = 1
    labels = {
        SLICE_NAME_LABEL: slice_name,
        WORKER_ID_LABEL: str(worker_id),
        POD_TYPE_LABEL: shape.pod_type,
        TOPOLOGY_LABEL: shape.topology,
        FAKE_TPU_LABEL: "true",
    }
    # The variables a GKE TPU host has: Ray's own TPU detection then derives the same
    # resources and labels as the explicit ones, and never polls the GCE metadata server.
    env = {
        **base_env,
        "TPU_NAME": slice_name,
        "TPU_WORKER_ID": str(worker_id),
        "TPU_ACCELERATOR_TYPE": shape.pod_type,
        "TPU_TOPOLOGY": shape.topology,
    }
    record = _start_node(
        [
            f"--address={state.gcs_address}",
            "--num-cpus=1",
            f"--resources={json.dumps(resources)}",
            f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}",
            # One log monitor per machine: every node shares the session's log folder, and
            # each monitor would print every worker line again (the head's one is enough).
            "--include-log-monitor=false",
            *common,
            *_node_ports(),
        ],
        env,
        logs / f"{slice_name}-w{worker_id}.log",
        f"{slice_name}/w{worker_id}",
    )
    record.slice_name, record.worker_id = slice_name, worker_id
    return record


def stop_nodes(nodes: list[NodeRecord]) -> list[int]:
    """Stop the recorded process groups (and their descendants); return the PIDs signalled.

    SIGTERM first: `ray start --block` then shuts its raylet, GCS and agents down itself.
    Whatever is left of the group or its descendants after a grace period gets SIGKILL.
    """
    import psutil

    owned: dict[int, psutil.Process] = {}
    for record in nodes:
        leader = _process(record)
        if leader is None:
            continue
        owned[leader.pid] = leader
        for child in leader.children(recursive=True):
            owned[child.pid] = child
        for proc in psutil.process_iter():  # orphans reparented to init keep the group id
            try:
                if os.getpgid(proc.pid) == record.pid:
                    owned[proc.pid] = proc
            except (ProcessLookupError, psutil.Error):
                pass
    workers_first = sorted((r for r in nodes if r.pid in owned), key=lambda r: r.name == "head")
    for record in workers_first:
        try:
            owned[record.pid].send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(owned.values()), timeout=STOP_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return sorted(owned)


def down(run_state_dir: str | os.PathLike | None = None) -> list[int]:
    path = state_path(run_state_dir)
    state = load_state(path)
    if state is None:
        return []
    pids = stop_nodes(state.nodes)
    path.unlink(missing_ok=True)
    return pids


# --- status ----------------------------------------------------------------------------


def describe(state: ClusterState) -> str:
    lines = [
        f"cluster: {state.pods} pods x {state.hosts_per_pod} hosts x {state.chips_per_host} chips "
        f"(TPU v4 {state.pod_type}, topology {state.topology}, fake: JAX on CPU)",
        f"address: {state.gcs_address}   dashboard: {state.dashboard_url}",
        f"  ray job submit --address {state.dashboard_url} --working-dir . -- python ...",
    ]
    procs = {n.name: _process(n) is not None for n in state.nodes}
    try:
        nodes = list_cluster_nodes(state.dashboard_url)
    except Exception as err:  # noqa: BLE001 - status must still print what it knows
        nodes = []
        lines.append(f"state API unreachable at {state.dashboard_url}: {err}")
    alive_hosts = 0
    for node in sorted(
        nodes,
        key=lambda n: (
            not n["is_head"],
            n["labels"].get(SLICE_NAME_LABEL, ""),
            n["labels"].get(WORKER_ID_LABEL, ""),
        ),
    ):
        labels, res = node["labels"], node["resources"]
        if node["is_head"]:
            lines.append(f"  head        {node['state']:<6} cpus={res.get('CPU', 0):g}")
            continue
        alive_hosts += node["state"] == "ALIVE"
        tpu_res = {k: v for k, v in res.items() if "TPU" in k}
        lines.append(
            f"  {labels.get(SLICE_NAME_LABEL, '?')}/w{labels.get(WORKER_ID_LABEL, '?'):<4}"
            f"{node['state']:<6} {json.dumps(tpu_res)} pod-type={labels.get(POD_TYPE_LABEL)} "
            f"topology={labels.get(TOPOLOGY_LABEL)}"
        )
    dead = [name for name, ok in procs.items() if not ok]
    health = (
        "healthy" if not dead and alive_hosts == state.pods * state.hosts_per_pod else "DEGRADED"
    )
    lines.append(
        f"health: {health}: {alive_hosts}/{state.pods * state.hosts_per_pod} TPU hosts alive"
        + (f"; recorded processes gone: {', '.join(dead)}" if dead else "")
    )
    return "\n".join(lines)


# --- CLI -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "remove-pod", "add-pod"])
    parser.add_argument("pod", nargs="?", type=int, default=None,
                        help="remove-pod/add-pod: the pod to take away or give back")
    parser.add_argument("--pods", type=int, default=2, help="TPU slices (pods)")
    parser.add_argument("--hosts-per-pod", type=int, default=2, help="TPU hosts per pod")
    parser.add_argument(
        "--chips-per-host", type=int, default=4, help="TPU chips (CPU devices) per host"
    )
    parser.add_argument(
        "--object-store-mb", type=int, default=150, help="object store per node, MB"
    )
    parser.add_argument(
        "--dir", default=None, help=f"where the state file goes (default {DEFAULT_STATE_DIR})"
    )


def main(args: argparse.Namespace) -> int:
    if args.action in ("remove-pod", "add-pod"):  # elastic pods: platform/ray/elastic_cluster.py
        from palm_platform.ray.elastic_cluster import main as change_pod

        return change_pod(args)
    path = state_path(args.dir)
    if args.action == "down":
        if load_state(path) is None:
            print(f"no local cluster recorded in {path}")
            return 0
        pids = down(args.dir)
        print(f"stopped {len(pids)} processes of the local cluster recorded in {path}")
        return 0
    state = load_state(path)
    if args.action == "status":
        if state is None:
            print(f"no local cluster recorded in {path}. Fix: `palm cluster up`")
            return 1
        print(describe(state))
        return 0 if cluster_alive(state) else 1
    try:
        shape = SliceShape(args.pods, args.hosts_per_pod, args.chips_per_host)
    except ValueError as err:
        print(f"palm cluster up: {err}. Fix: change --hosts-per-pod or --chips-per-host.")
        return 2
    if state is not None:
        if cluster_alive(state):
            print(f"local cluster already up (recorded in {path})")
            print(describe(state))
            if state.shape != shape:
                print(
                    f"it has a different shape than requested ({shape.pods}x{shape.hosts_per_pod}"
                    f"x{shape.chips_per_host}). Fix: `palm cluster down` first."
                )
                return 1
            return 0
        print(f"cleaning stale cluster state in {path}")
        down(args.dir)
    state = up(shape, object_store_mb=args.object_store_mb, run_state_dir=args.dir)
    print(describe(state))
    print(f"state recorded in {path}; stop it with `palm cluster down`")
    return 0
