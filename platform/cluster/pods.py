"""`palm cluster remove-pod N` / `palm cluster add-pod N`: lose and regain a whole pod locally.

A real TPU slice fails as a unit (one host down makes the slice unusable), so taking pod N
away stops every fake host of that pod: each `ray start` process group we recorded, with
its raylet and the train workers on it. Giving it back starts the same hosts again (same
slice name, worker ids, resources and labels), so Ray's TPU slice placement can reserve the
slice again. The head and the other pods are untouched. The state file keeps only live
nodes, so `palm run` and `palm cluster status` go on working in between.

Kept beside nodes.py (which owns `up`/`down`): it only adds and removes records of
an existing cluster, through nodes.py's own helpers, so a host comes back exactly as
`up` started it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from palm_platform.cluster import nodes
from palm_platform.cluster.state import (
    ClusterState,
    NodeRecord,
    load_state,
    save_state,
    state_path,
)
from palm_platform.topology import SLICE_NAME_LABEL, WORKER_ID_LABEL

TRAIN_WORKER = "RayTrainWorker"  # Ray Train v2's worker actor class: its processes' title


class PodChangeError(RuntimeError):
    """The local cluster cannot take this pod away or give it back (message says why)."""


def _state(run_state_dir: str | None) -> tuple[Path, ClusterState]:
    path = state_path(run_state_dir)
    state = load_state(path)
    if state is None:
        raise PodChangeError(f"no local cluster recorded in {path}. Fix: `palm cluster up`")
    return path, state


def _check_pod(state: ClusterState, pod: int) -> None:
    if not 0 <= pod < state.pods:
        raise PodChangeError(f"pod {pod} does not exist: the local cluster has pods 0 to "
                             f"{state.pods - 1}")


DRAIN_TIMEOUT_S = 300.0  # a save at the agreed step, then the worker group's shutdown


@dataclass(frozen=True)
class Drained:
    """What a planned removal waited for: the train workers it noticed, whether they left."""

    workers: int
    left: bool
    waited_s: float


def remove_pod(pod: int, run_state_dir: str | None = None, *,
               drain: bool = False) -> tuple[list[int], Drained | None]:
    """Stop every host of pod `pod`; returns the PIDs signalled (and, with `drain`, what the
    drain waited for).

    Without `drain` the hosts go at once, as a lost pod does: the run restarts on the pods
    left from its newest checkpoint. With `drain` (a planned removal, as a maintenance
    notice gives one), the pod's train workers first get SIGTERM, the preemption notice
    (checkpoint/preemption.py): every host of the run saves one agreed step and the workers
    leave; the hosts are stopped once they have, and `palm run` launches the run again on
    the pods left, from that step (ray/resize.py has the grow-back's half).
    """
    path, state = _state(run_state_dir)
    _check_pod(state, pod)
    name = state.shape.slice_name(pod)
    hosts = [n for n in state.nodes if n.slice_name == name]
    if not hosts:
        raise PodChangeError(
            f"pod {pod} ({name}) is already removed. Fix: `palm cluster add-pod {pod}`"
        )
    drained = _drain(hosts, DRAIN_TIMEOUT_S) if drain else None
    pids = nodes.stop_nodes(hosts)
    state.nodes = [n for n in state.nodes if n.slice_name != name]
    save_state(path, state)
    return pids, drained


def _train_workers(hosts: list[NodeRecord]) -> list:
    """The Ray Train worker processes started under these hosts' `ray start` processes."""
    import psutil

    leaders = [proc for proc in map(nodes.node_process, hosts) if proc is not None]
    found = []
    for leader in leaders:
        try:
            children = leader.children(recursive=True)
        except psutil.Error:
            continue
        for proc in children:
            try:
                if TRAIN_WORKER in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.Error:
                pass
    return found


def _drain(hosts: list[NodeRecord], timeout_s: float) -> Drained:
    """SIGTERM the hosts' train workers (a preemption notice) and wait until they exit: the
    run saved its agreed step and Ray Train shut the worker group down."""
    import psutil

    start = time.monotonic()
    workers = _train_workers(hosts)
    for proc in workers:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(workers, timeout=timeout_s)
    return Drained(workers=len(workers), left=not alive, waited_s=time.monotonic() - start)


def add_pod(pod: int, run_state_dir: str | None = None) -> int:
    """Start every host of pod `pod` again; returns how many hosts started."""
    path, state = _state(run_state_dir)
    _check_pod(state, pod)
    shape = state.shape
    name = shape.slice_name(pod)
    if any(n.slice_name == name for n in state.nodes):
        raise PodChangeError(
            f"pod {pod} ({name}) is already up. Fix: `palm cluster remove-pod {pod}` first"
        )
    if not nodes.cluster_alive(state):
        raise PodChangeError(f"the local cluster recorded in {path} is not healthy (a recorded "
                             "process is gone). Fix: `palm cluster down` then `palm cluster up`")
    # The same environment and options `nodes.up` gives its hosts.
    base_env = nodes._node_env(state.temp_dir, state.auth_mode)
    common = [f"--temp-dir={state.temp_dir}",
              f"--object-store-memory={state.object_store_mb * 1024 * 1024}",
              "--disable-usage-stats"]
    logs = path.parent / "cluster-logs"
    started = []
    # Each host is waited for by its own new node id, not by a count of alive hosts: right
    # after `remove-pod`, the GCS may still list the removed hosts as ALIVE (it marks a node
    # dead once its raylet is gone for good), so a count is met at once and the next host
    # starts while the previous one's raylet has not created its sockets yet. `ray start`
    # names a node's plasma and raylet sockets by the first index whose file does not exist
    # (ray/_private/node.py, `_make_inc_temp`), so both hosts picked the same names and the
    # second raylet aborted with "bind: Address already in use" (issue 30).
    known = _node_ids(state)
    try:
        for worker_id in range(shape.hosts_per_pod):
            for attempt in (1, 2):
                record = nodes._start_host(shape, pod, worker_id, state, base_env, common, logs)
                started.append(record)
                state.nodes.append(record)
                save_state(path, state)  # recorded at once: `down` stops it even if we fail
                try:
                    nodes._wait_for(
                        lambda worker_id=worker_id: _new_host_alive(state, name, worker_id, known),
                        nodes.START_TIMEOUT_S, f"host {record.name} to join the cluster", [record])
                    break
                except RuntimeError as error:
                    # It exited while starting: `ray start` gives its raylet a fixed 30 s to
                    # register (ray/_private/node.py), which a busy machine can exceed. Once
                    # more, as a new incarnation (new socket names), then give up.
                    nodes.stop_nodes([record])
                    started.remove(record)
                    state.nodes.remove(record)
                    save_state(path, state)
                    if attempt == 2:
                        raise
                    print(f"host {record.name} did not start ({error}); starting it again",
                          file=sys.stderr)
    except (RuntimeError, TimeoutError) as error:
        raise PodChangeError(f"pod {pod} did not come back: {error}") from None
    return len(started)


def _node_ids(state: ClusterState) -> set[str]:
    """Every node id the GCS lists now, alive or dead (the state API retried while busy)."""
    for _ in range(20):
        try:
            return {n["node_id"] for n in nodes.list_cluster_nodes(state.dashboard_url)}
        except Exception:  # noqa: BLE001 - the state API may be busy; try again
            time.sleep(0.5)
    raise PodChangeError(f"the cluster's state API at {state.dashboard_url} does not answer. "
                         "Fix: `palm cluster status`, then `palm cluster down` and `up`")


def _new_host_alive(state: ClusterState, slice_name: str, worker_id: int, known: set[str]) -> bool:
    """Whether a node that was not there before is ALIVE as host `worker_id` of `slice_name`;
    it is then added to `known`, so the next host waits for a node of its own."""
    try:
        listed = nodes.list_cluster_nodes(state.dashboard_url)
    except Exception:  # noqa: BLE001 - the state API may be busy; the wait retries
        return False
    for node in listed:
        labels = node["labels"]
        if (node["state"] == "ALIVE" and node["node_id"] not in known
                and labels.get(SLICE_NAME_LABEL) == slice_name
                and labels.get(WORKER_ID_LABEL) == str(worker_id)):
            known.add(node["node_id"])
            return True
    return False


def main(args: argparse.Namespace) -> int:
    """`palm cluster remove-pod|add-pod N [--dir D]` (hooked into local.py's CLI)."""
    if args.pod is None:
        print(f"palm cluster {args.action}: which pod? Fix: `palm cluster {args.action} 1`",
              file=sys.stderr)
        return 2
    drain = getattr(args, "drain", False)
    if drain and args.action != "remove-pod":
        print(f"palm cluster {args.action}: --drain is for remove-pod. Fix: drop --drain",
              file=sys.stderr)
        return 2
    try:
        if args.action == "remove-pod":
            pids, drained = remove_pod(args.pod, args.dir, drain=drain)
            print(f"pod {args.pod} removed: stopped {len(pids)} processes of its hosts"
                  + _drain_note(drained))
        else:
            hosts = add_pod(args.pod, args.dir)
            print(f"pod {args.pod} added back: {hosts} hosts alive")
    except PodChangeError as error:
        print(f"palm cluster {args.action}: {error}", file=sys.stderr)
        return 2
    return 0


def _drain_note(drained: Drained | None) -> str:
    if drained is None:
        return ""
    if not drained.workers:
        return " (no run was training on it)"
    if drained.left:
        return (f" after its {drained.workers} train workers saved an agreed step and left "
                f"({drained.waited_s:.0f} s)")
    return (f"; its train workers had not left {drained.waited_s:.0f} s after the notice, so "
            "the run restarts from its newest checkpoint")
