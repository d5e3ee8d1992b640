"""Start and stop the processes of a local fake-TPU Ray cluster.

Each node is one `ray start --block` process in its own session (so its process group is
its own): a head with no CPUs (drivers, the Train controller and the dashboard live there)
and one node per fake TPU host with one CPU, the TPU resources, labels and TPU_* variables
a GKE TPU host has (see platform/topology.py), so Ray Train's real TPU code path places workers on
them. `stop_nodes` signals exactly the recorded process groups, never `ray stop`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from palm_platform.cluster.state import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_GCS_PORT,
    LOCALHOST,
    ClusterState,
    NodeRecord,
    free_port,
    load_state,
    node_port_args,
    preferred_port,
    save_state,
    state_path,
)
from palm_platform.topology import (
    ACCELERATOR_TYPE,
    FAKE_TPU_LABEL,
    POD_TYPE_LABEL,
    SLICE_NAME_LABEL,
    TOPOLOGY_LABEL,
    WORKER_ID_LABEL,
    SliceShape,
)

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0


def node_process(record: NodeRecord):
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
        from palm_platform.cluster import auth

        request = urllib.request.Request(f"{dashboard_url}/api/version", headers=auth.headers())
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


def cluster_alive(state: ClusterState) -> bool:
    return all(node_process(n) is not None for n in state.nodes) and _dashboard_up(
        state.dashboard_url)


def ray_address_from_state(run_state_dir: str | os.PathLike | None = None) -> str | None:
    """The GCS address of the recorded local cluster, or None when none is recorded/alive."""
    state = load_state(state_path(run_state_dir))
    if state is None or not cluster_alive(state):
        return None
    return state.gcs_address


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


def _alive_node_count(dashboard_url: str) -> int:
    try:
        return sum(1 for n in list_cluster_nodes(dashboard_url) if n["state"] == "ALIVE")
    except Exception:  # the state API answers only once the dashboard is fully up
        return 0


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
    port = next((int(a.split("=", 1)[1]) for a in args if a.startswith("--node-manager-port=")),
                None)
    return NodeRecord(name, proc.pid, psutil.Process(proc.pid).create_time(), str(log_path),
                      node_manager_port=port)


def _wait_for(predicate, timeout_s: float, what: str, nodes: list[NodeRecord]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [n for n in nodes if node_process(n) is None]
        if dead:
            raise RuntimeError(
                f"ray node {dead[0].name} exited while waiting for {what}; see {dead[0].log_path}"
            )
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _node_env(temp_dir: str, auth_mode: str | None) -> dict[str, str]:
    """The environment every node of the cluster starts with, in the cluster's auth mode."""
    from palm_platform.cluster import auth

    if auth_mode is None:  # a cluster recorded before token mode was the default (auth.py)
        auth_mode = "token" if auth.enable_from_environment() else "disabled"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "TPU_"))}
    env.update(auth.node_env(auth_mode))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's log monitor also streams libtpu's log folder (TPU_LOG_DIR, else /tmp/tpu_logs) to
    # every driver. On a laptop that folder holds the logs of every libtpu user on the machine
    # (`palm plan`), thousands of lines: give the fake TPU hosts a folder of their own.
    tpu_log_dir = Path(temp_dir) / "tpu_logs"
    tpu_log_dir.mkdir(parents=True, exist_ok=True)
    env["TPU_LOG_DIR"] = str(tpu_log_dir)
    # Jobs submitted to this cluster (`ray job submit -- palm run ...`, or an executable job
    # file whose shebang runs `palm`) find this environment's `palm` and `python` first.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def up(
    shape: SliceShape,
    *,
    object_store_mb: int = 150,
    run_state_dir: str | os.PathLike | None = None,
    no_auth: bool = False,
) -> ClusterState:
    """Start the head and one node per fake TPU host; return the recorded state.

    Token mode unless `no_auth` (auth.py): a token is made first if none is at hand, and a
    line naming its file (never the token) is printed.
    """
    from palm_platform.cluster import auth

    auth_mode, note = auth.prepare_cluster_auth(no_auth)
    if note:
        print(note)
    path = state_path(run_state_dir)
    # A short temp dir: Ray's unix sockets live under it and paths are capped at 107 bytes.
    temp_dir = f"/tmp/palm-ray-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    gcs_port = preferred_port(DEFAULT_GCS_PORT)
    dashboard_port = preferred_port(DEFAULT_DASHBOARD_PORT)
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
        auth_mode=auth_mode,
    )
    base_env = _node_env(temp_dir, auth_mode)
    common = [
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    logs = path.parent / "cluster-logs"
    try:
        _start_head(state, path, gcs_port, dashboard_port, base_env, common, logs)
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


def _start_head(
    state: ClusterState,
    path: Path,
    gcs_port: int,
    dashboard_port: int,
    base_env: dict[str, str],
    common: list[str],
    logs: Path,
) -> None:
    """Start the head node, record it, and wait until its GCS address is known."""
    head = _start_node(
        [
            "--head",
            f"--port={gcs_port}",
            "--num-cpus=0",
            f"--dashboard-host={LOCALHOST}",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            *common,
            *node_port_args(),
        ],
        base_env,
        logs / "head.log",
        "head",
    )
    state.nodes.append(head)
    save_state(path, state)  # record as we go: a failed `up` is still cleaned by `down`
    # `ray start` writes the GCS address file last, once the head is fully up.
    address_file = Path(state.temp_dir) / "ray_current_cluster"
    address_file.unlink(missing_ok=True)
    _wait_for(
        lambda: address_file.exists() and _dashboard_up(state.dashboard_url),
        START_TIMEOUT_S,
        "the head",
        state.nodes,
    )
    state.gcs_address = address_file.read_text().strip()
    save_state(path, state)


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
            *node_port_args(),
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
        leader = node_process(record)
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
