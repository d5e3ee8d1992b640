"""Who can reach a local cluster brought up as a new user would: `palm cluster up` in a shell
with no Ray variables, then the listening ports, and whether a caller without the token is
refused by the GCS, a raylet and the dashboard's API (and one with it served).

    python benchmarks/check_auth.py [--no-auth] [--dir DIR]

The shell's HOME is a temporary folder, so a token that `palm cluster up` makes lands in its
~/.ray/auth_token (Ray's default place), never in the real one, which every later Ray process
of this user would find.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from palm_platform.cluster import local as cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.listening import cluster_pids, listeners  # noqa: E402
from tests.support.local_cluster import BIN  # noqa: E402


def _grpc_verdict(address: str, stub_name: str, method: str, request, token: str | None) -> str:
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        from ray.core.generated import gcs_service_pb2_grpc, node_manager_pb2_grpc

        module = gcs_service_pb2_grpc if "Gcs" in stub_name else node_manager_pb2_grpc
        stub = getattr(module, stub_name)(channel)
        try:
            getattr(stub, method)(request, timeout=20, metadata=metadata)
            return "served"
        except grpc.RpcError as error:
            return f"refused ({error.code().name})"


def _http_verdict(url: str, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20):
            return "served"
    except urllib.error.HTTPError as error:
        return f"refused (HTTP {error.code})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-auth", action="store_true", help="pass --no-auth to cluster up")
    parser.add_argument("--dir", default=None, help="state dir (default: a temporary one)")
    args = parser.parse_args()
    from ray.core.generated import gcs_service_pb2, node_manager_pb2

    work = Path(tempfile.mkdtemp(prefix="palm-auth-check-"))
    state_dir = Path(args.dir or work / "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["HOME"] = str(work)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    up_cmd = [BIN / "palm", "cluster", "up", "--pods", "1", "--hosts-per-pod", "1",
              "--chips-per-host", "4", "--dir", str(state_dir)] + (["--no-auth"] * args.no_auth)
    started = time.monotonic()
    up = subprocess.run(up_cmd, env=env, capture_output=True, text=True, timeout=300)
    print(f"palm cluster up: exit {up.returncode} in {time.monotonic() - started:.1f} s")
    print("".join(f"  | {line}\n" for line in (up.stdout + up.stderr).splitlines()), end="")
    state = cluster.load_state(cluster.state_path(state_dir))
    try:
        if up.returncode != 0 or state is None:
            return
        token_file = work / ".ray" / "auth_token"
        token = token_file.read_text().strip() if token_file.exists() else None
        if token is not None:
            print(f"token file: {token_file} mode {token_file.stat().st_mode & 0o777:04o}")
        else:
            print("token file: none")
        socks = listeners(cluster_pids([n.pid for n in state.nodes]))
        print(f"listening sockets: {len(socks)}, "
              f"{sum(not s.loopback for s in socks)} on a non-loopback address")
        for sock in sorted(socks, key=lambda s: (s.name, s.port)):
            print(f"  {sock.name:<24} {sock.address}:{sock.port}")
        host = next(n for n in state.nodes if n.name != "head")
        raylet = f"{state.gcs_address.rsplit(':', 1)[0]}:{host.node_manager_port}"
        checks = {
            "GCS": lambda t: _grpc_verdict(state.gcs_address, "NodeInfoGcsServiceStub",
                                           "GetClusterId",
                                           gcs_service_pb2.GetClusterIdRequest(), t),
            "raylet": lambda t: _grpc_verdict(raylet, "NodeManagerServiceStub",
                                              "GetNodeStats",
                                              node_manager_pb2.GetNodeStatsRequest(), t),
            "dashboard API": lambda t: _http_verdict(f"{state.dashboard_url}/api/jobs/", t),
        }
        for name, check in checks.items():
            line = f"{name:<14} without token: {check(None)}"
            if token is not None:
                line += f"; with it: {check(token)}"
            print(line)
    finally:
        cluster.down(state_dir)


if __name__ == "__main__":
    main()
