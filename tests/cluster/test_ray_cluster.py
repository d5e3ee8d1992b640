"""The local fake-TPU Ray cluster and Ray Train's TPU path on it, end to end.

One cluster (2 pods x 2 hosts x 4 chips) is brought up with `palm cluster up` for the
whole module and stopped with `palm cluster down` by the last test (and, whatever
happens, by the fixture's teardown).
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from palm_platform.cluster import local as cluster
from palm_platform.ray import launch
from palm_platform.ray.feasibility import InfeasibleTopologyError
from palm_platform.ray.launch_spec import LaunchSpec
from palm_platform.topology import SliceShape
from tests.support import probe
from tests.support.local_cluster import driver_env
from tests.support.probe import distributed_probe

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SHAPE = ["--pods", "2", "--hosts-per-pod", "2", "--chips-per-host", "4"]


def palm(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "palm_platform.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    import ray

    run_state_dir = tmp_path_factory.mktemp("palm-cluster")
    temp_dir = None
    try:
        up = palm("cluster", "up", *SHAPE, "--dir", str(run_state_dir))
        assert up.returncode == 0, up.stdout + up.stderr
        temp_dir = cluster.load_state(cluster.state_path(run_state_dir)).temp_dir
        yield run_state_dir
    finally:
        ray.shutdown()
        cluster.down(run_state_dir)  # no-op when the last test already stopped it
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's session logs


@pytest.fixture(scope="module")
def state(state_dir):
    return cluster.load_state(cluster.state_path(state_dir))


@pytest.mark.timeout(120)
def test_status_shows_four_fake_hosts_in_two_slices(state_dir):
    status = palm("cluster", "status", "--dir", str(state_dir), timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for host in ("pod-0/w0", "pod-0/w1", "pod-1/w0", "pod-1/w1"):
        line = next(ln for ln in status.stdout.splitlines() if ln.strip().startswith(host))
        assert "ALIVE" in line and '"TPU": 4.0' in line and '"accelerator_type:TPU-V4": 1.0' in line
        assert "pod-type=v4-16 topology=2x2x2" in line
        assert ('"TPU-v4-16-head": 1.0' in line) == host.endswith("w0")
    assert "healthy: 4/4 TPU hosts alive" in status.stdout


@pytest.mark.timeout(120)
def test_up_on_a_live_cluster_is_a_no_op(state_dir, state):
    again = palm("cluster", "up", *SHAPE, "--dir", str(state_dir), timeout=60)
    assert again.returncode == 0 and "already up" in again.stdout
    reloaded = cluster.load_state(cluster.state_path(state_dir))
    assert [n.pid for n in reloaded.nodes] == [n.pid for n in state.nodes]


@pytest.mark.timeout(240)
def test_launch_runs_one_jax_process_per_fake_host_with_cross_process_collectives(state, tmp_path):
    out_dir = tmp_path / "probe"
    out_dir.mkdir()
    launch.launch(
        distributed_probe,
        {"out_dir": str(out_dir)},
        launch_spec(tmp_path, run_name="probe"),
        address=state.gcs_address,
    )
    reports = sorted(
        (json.loads(p.read_text()) for p in out_dir.glob("worker-*.json")),
        key=lambda r: r["world_rank"],
    )
    assert len(reports) == 4
    for rank, report in enumerate(reports):
        assert report["process_index"] == rank
        assert (report["process_count"], report["device_count"]) == (4, 16)
        assert report["local_device_count"] == 4 and report["platform"] == "cpu"
        assert report["sharded_sum"] == report["expected_sum"] == 136.0
        assert report["allgathered_process_indices"] == [0, 1, 2, 3]
        assert report["megascale_num_slices"] == "2"
        assert report["jax_init_timeout_s"] == 120  # launch's default bound
    slice_of_rank = [(r["megascale_slice_id"], r["tpu_name"]) for r in reports]
    assert slice_of_rank in (
        [("0", "pod-0"), ("0", "pod-0"), ("1", "pod-1"), ("1", "pod-1")],
        [("0", "pod-1"), ("0", "pod-1"), ("1", "pod-0"), ("1", "pod-0")],
    )


TWO_PODS = SliceShape(2, 2, 4, "2x2x2")


def launch_spec(tmp_path, shape=TWO_PODS, **overrides) -> LaunchSpec:
    kwargs = dict(shape=shape, run_name="infeasible", storage_path=str(tmp_path / "runs"),
                  max_failures=0)
    return LaunchSpec(**{**kwargs, **overrides})


@pytest.mark.timeout(120)
def test_launch_asking_for_more_pods_than_the_cluster_has_fails_with_what_is_missing(
    state, tmp_path
):
    with pytest.raises(InfeasibleTopologyError) as err:
        launch.launch(distributed_probe, {}, launch_spec(tmp_path, SliceShape(3, 2, 4, "2x2x2")),
                      address=state.gcs_address)
    message = str(err.value)
    assert "needs 3 pods x 2 hosts x 4 chips of TPU-V4 topology 2x2x2" in message
    assert "2 matching slices (pod-0: 2 hosts, pod-1: 2 hosts)" in message
    assert "palm cluster up --pods 3" in message


@pytest.mark.timeout(120)
def test_launch_with_a_topology_the_cluster_lacks_names_the_slices_it_has(state, tmp_path):
    with pytest.raises(InfeasibleTopologyError) as err:
        launch.launch(
            distributed_probe,
            {},
            launch_spec(tmp_path, SliceShape(1, 4, 4, "2x2x4")),
            address=state.gcs_address,
        )
    assert "0 matching slices" in str(err.value)
    assert "pod-0: pod type v4-16 topology 2x2x2" in str(err.value)


@pytest.mark.timeout(180)
def test_placement_that_never_comes_fails_after_bounded_retries(state, tmp_path, monkeypatch):
    """Ray Train itself must give up (finite controller_failure_limit), not retry forever."""
    real_check = launch.check_feasible
    calls = []

    def pass_first_check(nodes, request):  # let the request reach Ray Train unchecked
        calls.append(request)
        return [] if len(calls) == 1 else real_check(nodes, request)

    monkeypatch.setattr(launch, "check_feasible", pass_first_check)
    with pytest.raises(InfeasibleTopologyError, match="needs 3 pods") as err:
        launch.launch(
            distributed_probe,
            {},
            launch_spec(tmp_path, SliceShape(3, 2, 4, "2x2x2"), feasibility_timeout_s=5,
                        controller_failure_limit=1, fake_tpu=True),
            address=state.gcs_address,
        )
    assert type(err.value.__cause__).__name__ == "ControllerError"


@pytest.mark.timeout(240)
def test_ray_job_submit_runs_a_jax_trainer_job_on_the_cluster(state, tmp_path):
    work_dir = tmp_path / "job"
    (work_dir / ".venv").mkdir(parents=True)
    (work_dir / ".venv" / "big.bin").write_bytes(b"0" * 1024)
    (work_dir / ".gitignore").write_text(".venv/\n")
    # the probe travels in the working directory, as a user's train function would
    shutil.copy(Path(probe.__file__), work_dir / "probe.py")
    (work_dir / "job.py").write_text(
        textwrap.dedent(
            """
            import os, tempfile
            from palm_platform.ray.launch import launch
            from palm_platform.ray.launch_spec import LaunchSpec
            from probe import distributed_probe
            from palm_platform.topology import SliceShape

            assert not os.path.exists(".venv"), "working-dir upload must skip .venv"
            result = launch(distributed_probe, {}, LaunchSpec(
                shape=SliceShape(2, 2, 4, "2x2x2"), run_name="job",
                storage_path=tempfile.mkdtemp(), max_failures=0))
            print("PROBE-OK", result.run_path)
            """
        )
    )
    submit = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "job",
            "submit",
            "--address",
            state.dashboard_url,
            "--working-dir",
            str(work_dir),
            "--",
            "python",
            "job.py",
        ],
        capture_output=True,
        text=True,
        timeout=230,
        env=driver_env(state),  # token mode: Ray's job CLI sends the token only then
    )
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-4000:]
    assert "PROBE-OK" in output and "succeeded" in output, output[-4000:]


@pytest.mark.timeout(120)
def test_down_stops_exactly_the_recorded_processes(state_dir, state):
    # A process `ray stop` would kill (its command line names a Ray worker); ours must not.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "ray/default_worker.py"]
    )
    try:
        recorded = [n.pid for n in state.nodes]
        assert all(psutil.pid_exists(pid) for pid in recorded)
        # This process is still a Ray driver of the cluster (the launch tests): disconnect it
        # first. A driver whose GCS is gone exits the whole process (exit 1) once Ray's
        # reconnect timeout (60 s) passes, which a slow `down` on a loaded machine can reach.
        import ray

        ray.shutdown()
        down = palm("cluster", "down", "--dir", str(state_dir), timeout=90)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in recorded
        )
        assert bystander.poll() is None
        assert not cluster.state_path(state_dir).exists()
    finally:
        bystander.kill()
        bystander.wait()
