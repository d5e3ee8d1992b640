"""Which addresses the processes of a local cluster listen on (to prove none is public).

Ray has no authentication: whoever reaches a GCS, raylet or dashboard agent port can run
code on the machine. This lists the listening sockets of the recorded node processes, their
descendants (raylet, GCS, agents, workers) and orphans left in their process groups.

Measured on Ray 2.60 (tests/ray/test_hardening_ray.py): only the dashboard honours
`--dashboard-host=127.0.0.1`. `--node-ip-address=127.0.0.1` does not help: `ray start`
replaces a loopback node IP with the machine's address (`services.resolve_ip_for_localhost`;
only on macOS/Windows, where multi-node clusters are refused, does it keep loopback), and the
servers bind loopback only for a loopback node IP (`is_localhost(ip) ? localhost :
all interfaces`), so they bind `::`. Read in Ray's source and checked; no flag or RAY_*
setting changes it. The test is marked xfail(strict) so it flips when Ray binds loopback; until
then the cluster is closed by token authentication (platform/cluster/auth.py).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.address.split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
        return (mapped or address).is_loopback


def cluster_pids(leader_pids: list[int]) -> set[int]:
    """The leaders, all their descendants, and every process left in their process groups."""
    import psutil

    pids: set[int] = set()
    for pid in leader_pids:
        try:
            leader = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        pids.add(pid)
        pids.update(child.pid for child in leader.children(recursive=True))
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in leader_pids:
                pids.add(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return pids


def listeners(pids: set[int]) -> list[Listener]:
    """TCP sockets in LISTEN state (and bound UDP sockets) owned by `pids`."""
    import psutil

    found = []
    for pid in sorted(pids):
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in conns:
            listening = conn.status == psutil.CONN_LISTEN or (
                conn.type == socket.SOCK_DGRAM and conn.laddr)
            if listening and conn.laddr:
                found.append(Listener(pid, name, conn.laddr.ip, conn.laddr.port))
    return found


def public_listeners(leader_pids: list[int]) -> list[Listener]:
    """The cluster's listening sockets that are reachable from other machines."""
    return [s for s in listeners(cluster_pids(leader_pids)) if not s.loopback]
