"""Test processes that together form one JAX cluster: a coordinator port and their outputs.

A worker reports with `print_result`: one write(2) of a whole line. gloo writes its `[Gloo]
Rank ...` lines to the same stdout from C++, each in two writes, and a `RESULT` line printed
in parts was split by one (CI saw `...: 1RESULT\n {"step": null}` and `{...}[Gloo] Rank`)."""

from __future__ import annotations

import json
import os
import re
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
    from tests.support.tiers import require_marker  # here: worker scripts import this module

    require_marker("multiprocess", "a test that starts JAX worker processes")
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def print_result(payload: dict) -> None:
    """In a worker: `RESULT {json}` on a line of its own, in one write (atomic on a pipe
    below 4 KiB), so no other writer of this stdout can land inside it."""
    sys.stdout.flush()
    line = f"\nRESULT {json.dumps(payload)}\n".encode()
    assert len(line) < 4096, "a RESULT line must fit one atomic pipe write"
    os.write(1, line)


def result_of(output: str) -> dict:
    """The JSON of the worker's `RESULT {json}` stdout line."""
    found = re.search(r"^RESULT (.*)$", output, re.MULTILINE)
    assert found is not None, f"no RESULT line in: {output[-3000:]}"
    return json.loads(found[1])


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
