"""Test processes that together form one JAX cluster: a coordinator port and their outputs."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    """A loopback port free right now (for jax.distributed's coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outputs_of(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each process's output; fails on the first non-zero exit with its tail, and never
    leaves a process behind (one stuck in a collective would wait for a dead peer)."""
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
            assert proc.returncode == 0, out[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs
