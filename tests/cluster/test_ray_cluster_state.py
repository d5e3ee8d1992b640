"""The cluster state file: stale records are recognised and cleaned without starting Ray."""

import argparse
import json
import subprocess
import sys

import psutil

from palm_platform.cluster import local as cluster
from tests.support.paths import TEST_JOBS


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
    from palm_platform.cluster import state as cluster_state

    ports = [cluster_state.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def _hostile_states(tmp_path) -> dict[str, bytes]:
    good = cluster.state_path(tmp_path).read_text()
    edited = json.loads(good)
    edited["nodes"][0]["pid"] = "1; rm -rf ~"
    return {
        "torn": good[: len(good) // 2].encode(),
        "a list": b"[1, 2]",
        "unknown field": good.replace('"pods"', '"podz"', 1).encode(),
        "pid not a number": json.dumps(edited).encode(),
        "deep nesting": b"[" * 200_000,
        "not utf-8": good.encode().replace(b'"head"', b'"h\xffad"'),
    }


def test_a_hostile_state_file_is_one_line_and_exit_2_for_every_command(tmp_path, capsys):
    stale_state(tmp_path)
    for name, data in _hostile_states(tmp_path).items():
        cluster.state_path(tmp_path).write_bytes(data)
        for action in ("status", "down", "up"):
            assert cluster.main(cli_args(action, tmp_path)) == 2, (name, action)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "not a palm cluster state file" in err, (name, err)
            assert str(cluster.state_path(tmp_path)) in err and "Fix:" in err and len(err) < 500


def test_palm_run_with_a_hostile_state_file_exits_2_before_touching_ray(tmp_path):
    import os
    from pathlib import Path

    import yaml

    stale_state(tmp_path / ".palm")
    cluster.state_path(tmp_path / ".palm").write_text('{"nodes": "x"}')
    spec = yaml.safe_load((TEST_JOBS / "ray-2host.yaml").read_text())
    spec["run_dir"], spec["checkpoint"]["directory"] = str(tmp_path / "run"), str(tmp_path / "ckpt")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([Path(sys.executable).parent / "palm", "run", str(tmp_path / "job.yaml")],
                         env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and "not a palm cluster state file" in run.stderr
