"""The cluster state file: stale records are recognised and cleaned without starting Ray."""

import argparse
import subprocess
import sys

import psutil

from palm_platform.ray import cluster


def stale_state(tmp_path) -> cluster.ClusterState:
    """A recorded cluster whose only process has exited (and whose dashboard is gone)."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(finished.pid).create_time()
    finished.wait()
    state = cluster.ClusterState(
        pods=1,
        hosts_per_pod=1,
        chips_per_host=4,
        topology="2x2x1",
        pod_type="v4-8",
        gcs_address="127.0.0.1:1",
        dashboard_url="http://127.0.0.1:1",
        temp_dir=str(tmp_path / "ray"),
        object_store_mb=100,
        nodes=[cluster.NodeRecord("head", finished.pid, create_time, str(tmp_path / "head.log"))],
    )
    cluster.save_state(cluster.state_path(tmp_path), state)
    return state


def cli_args(action, tmp_path):
    parser = argparse.ArgumentParser()
    cluster.add_arguments(parser)
    return parser.parse_args([action, "--dir", str(tmp_path)])


def test_status_of_a_stale_cluster_says_degraded_and_fails(tmp_path, capsys):
    stale_state(tmp_path)
    assert cluster.main(cli_args("status", tmp_path)) == 1
    out = capsys.readouterr().out
    assert "DEGRADED" in out and "recorded processes gone: head" in out
    assert cluster.ray_address_from_state(tmp_path) is None


def test_down_of_a_stale_cluster_removes_the_state_file(tmp_path):
    stale_state(tmp_path)
    assert cluster.down(tmp_path) == []  # nothing of ours is alive, nothing is signalled
    assert not cluster.state_path(tmp_path).exists()


def test_status_without_a_recorded_cluster_says_how_to_start_one(tmp_path, capsys):
    assert cluster.main(cli_args("status", tmp_path)) == 1
    assert "palm cluster up" in capsys.readouterr().out


def test_free_ports_are_never_handed_out_twice():
    # Two Ray components of one node given the same port fail to start (seen in CI).
    from palm_platform.ray import cluster_state

    ports = [cluster_state.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
