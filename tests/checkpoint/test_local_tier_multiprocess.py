"""The RAM tier with real JAX processes (2 processes x 4 CPU devices, gloo collectives).

Each restore checks every shard bitwise (-0.0 included) against the saved values, and the
data state and ledger that came with the step (tests/support/local_tier_worker.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.paths import SUPPORT
from tests.support.processes import free_port, outputs_of, result_of, spawn

WORKER = SUPPORT / "local_tier_worker.py"
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TWO_PODS = ["pod-0-w0", "pod-1-w0"]  # 2 pods x 1 host: each process is one pod
ONE_POD = ["pod-0-w0", "pod-0-w1"]  # 1 pod x 2 hosts: a ring of two
TWO_BY_TWO = ["pod-0-w0", "pod-0-w1", "pod-1-w0", "pod-1-w1"]  # the demo's 2 pods x 2 hosts


def _start(mode: str, root: Path, pods: int, hosts: list[str], **env) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for i, host in enumerate(hosts):
        slice_name, worker = host.rsplit("-w", 1)
        environ = dict(os.environ, JAX_PLATFORMS="cpu", TPU_NAME=slice_name,
                       TPU_WORKER_ID=worker, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                       **env)
        procs.append(spawn(WORKER, mode, root, pods, len(hosts), i, port, env=environ))
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    return outputs_of(procs, timeout=180)


def run(mode: str, root: Path, pods: int, hosts: list[str]) -> list[str]:
    return _finish(_start(mode, root, pods, hosts))


def results(root: Path, pods: int, hosts: list[str]) -> list[dict]:
    outputs = run("restore", root, pods, hosts)
    return [result_of(out) for out in outputs]


def test_a_pod_that_lost_its_ram_takes_the_newest_step_from_the_other_pod(tmp_path):
    run("save", tmp_path, 2, TWO_PODS)
    shutil.rmtree(tmp_path / "pod-1-w0")  # pod 1's host lost: its RAM is gone
    first, second = results(tmp_path, 2, TWO_PODS)
    assert first["step"] == second["step"] == 4
    assert first["tier"] == "peer"
    assert first["bytes_peer"] > 0 and first["bytes_local"] > 0
    # pod 0 read its own blocks once: what pod 1 received is that same state
    assert first["bytes_peer"] >= first["bytes_local"] - 4  # (the scalar is per device)


def test_hosts_back_in_other_ranks_restore_locally_and_with_both_copies_lost_nothing(tmp_path):
    run("save", tmp_path, 2, TWO_PODS)
    # Ray gave the hosts each other's rank: blocks are found by index, not by rank
    first, _ = results(tmp_path, 2, list(reversed(TWO_PODS)))
    assert (first["step"], first["tier"], first["bytes_peer"]) == (4, "local", 0)
    for host in TWO_PODS:  # both copies of every step lost: the persistent tier's turn
        shutil.rmtree(tmp_path / host)
    assert [r["step"] for r in results(tmp_path, 2, TWO_PODS)] == [None, None]


def test_a_one_pod_job_losing_a_host_restores_from_its_ring_neighbour(tmp_path):
    run("save", tmp_path, 1, ONE_POD)
    assert (tmp_path / "pod-0-w0" / "4" / "neighbour.bin").exists()
    shutil.rmtree(tmp_path / "pod-0-w1")
    first, second = results(tmp_path, 1, ONE_POD)
    assert first["step"] == second["step"] == 4
    assert first["tier"] == "peer" and first["bytes_peer"] > 0
    assert first["why_not_ram"] is None  # nothing newer was passed over
    # host 0's copy of host 1's blocks of step 4 lost too: step 4 is out, and the restore
    # of step 2 names the host whose blocks nobody held (host names allgathered)
    (tmp_path / "pod-0-w0" / "4" / "neighbour.json").unlink()
    first, second = results(tmp_path, 1, ONE_POD)
    assert first["step"] == second["step"] == 2 and first["tier"] == "peer"
    assert first["why_not_ram"] == second["why_not_ram"] == [4, (
        "RAM step 4 was incomplete (host 1 (pod-0-w1) lacks its blocks of step 4; no peer "
        "holds them)")]


def test_a_2x2_job_whose_hosts_came_back_in_other_ranks_with_one_ram_lost_restores_from_ram(
        tmp_path):
    """The README demo's restart (issue 37): host pod-0-w1 lost its RAM and Ray Train ranked
    each pod's hosts the other way round, so every process needs another host's blocks and
    pod-1-w1 holds the only copy that processes 1 and 3 both need (it sends twice)."""
    run("save", tmp_path, 2, TWO_BY_TWO)
    shutil.rmtree(tmp_path / "pod-0-w1")
    out = results(tmp_path, 2, ["pod-0-w1", "pod-0-w0", "pod-1-w1", "pod-1-w0"])
    assert [r["step"] for r in out] == [4, 4, 4, 4]  # every shard checked bitwise
    assert out[0]["tier"] == "peer" and out[0]["bytes_peer"] > 0  # every host received
    assert out[0]["why_not_ram"] is None


def test_a_save_torn_by_a_kill_is_never_restored(tmp_path):
    procs = _start("tear", tmp_path, 1, ONE_POD, TEAR_HOST="pod-0-w1")
    try:
        deadline = time.monotonic() + 180
        # host 0 committed its part of step 4 and waits for host 1, which never commits
        while not (tmp_path / "pod-0-w0" / "4").exists():
            assert time.monotonic() < deadline, "host 0 never committed its part of step 4"
            assert all(p.poll() is None for p in procs), "".join(procs[0].communicate())[-3000:]
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not (tmp_path / "pod-0-w0" / "4" / "COMPLETE").exists()
    first, second = results(tmp_path, 1, ONE_POD)
    assert first["step"] == second["step"] == 2 and first["tier"] == "local"
    assert not (tmp_path / "pod-0-w0" / "4").exists()  # the torn part was removed
