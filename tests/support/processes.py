"""Test processes that together form one JAX cluster: a coordinator port and their outputs.

A worker's stdout and stderr are two pipes, never one: gloo and XLA write to stderr from
their own threads, and merged, one of their lines can land inside a worker's `RESULT` line
(CI saw `{...}[Gloo] Rank ...` once)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys


def free_port() -> int:
    """A loopback port free right now (for jax.distributed's coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(script: str, *args: object, env: dict) -> subprocess.Popen:
    """One worker process running `script args...`, its stdout and stderr piped apart."""
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(output: str) -> dict:
    """The JSON of the worker's `RESULT {json}` stdout line."""
    return json.loads(output.split("RESULT ", 1)[1].splitlines()[0])


def outputs_of(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each process's stdout; fails on the first non-zero exit with its output's tail, and
    never leaves a process behind (one stuck in a collective would wait for a dead peer)."""
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            outputs.append(out)
            assert proc.returncode == 0, (out + (err or ""))[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs
