"""`palm cluster up|down|status`: a local Ray cluster whose nodes pose as TPU v4 hosts.

The processes outlive the command, like `ray start`; their PIDs, start times and ports go
to a state file, and `down` stops exactly those process groups. It never runs `ray stop`,
which would kill every Ray process on the machine, another user's cluster included.

This module is the CLI and the cluster's public face (launch.py, tests and benchmarks use
`cluster.up`, `cluster.down`, `cluster.state_path`, ...); the work is split by job:
state.py (state file, ports), nodes.py (starting and stopping the node processes),
status.py (what `status` prints), pods.py (`remove-pod` / `add-pod`).
"""

from __future__ import annotations

import argparse
import sys

from palm_platform.cluster.auth import AuthSetupError
from palm_platform.cluster.nodes import (  # noqa: F401 - the public API, re-exported
    cluster_alive,
    down,
    list_cluster_nodes,
    ray_address_from_state,
    stop_nodes,
    up,
)
from palm_platform.cluster.state import (  # noqa: F401 - the public API, re-exported
    DEFAULT_STATE_DIR,
    ClusterState,
    ClusterStateError,
    NodeRecord,
    load_state,
    save_state,
    state_path,
)
from palm_platform.cluster.status import describe
from palm_platform.topology import SliceShape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "remove-pod", "add-pod"])
    parser.add_argument("pod", nargs="?", type=int, default=None,
                        help="remove-pod/add-pod: the pod to take away or give back")
    parser.add_argument("--drain", action="store_true",
                        help="remove-pod: a planned removal: the run saves one agreed step "
                        "before the pod's hosts stop (without it: a lost pod)")
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
    parser.add_argument(
        "--no-auth", action="store_true",
        help="up: start the nodes without Ray's token authentication (anyone who reaches "
             "their ports can run code here); default: token mode, a token made if none")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except (ClusterStateError, AuthSetupError) as error:
        print(f"palm cluster: {error}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from palm_platform.cluster import auth

    auth.enable_from_environment()  # the state API then sends the token (auth.py)
    if args.action in ("remove-pod", "add-pod"):  # elastic pods: platform/cluster/pods.py
        from palm_platform.cluster.pods import main as change_pod

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
    state = up(shape, object_store_mb=args.object_store_mb, run_state_dir=args.dir,
               no_auth=args.no_auth)
    print(describe(state))
    print(f"state recorded in {path}; stop it with `palm cluster down`")
    return 0
