"""Token authentication is the default of `palm cluster up` (platform/cluster/auth.py), on a real
cluster brought up as a new user would: from a shell with no Ray variables and no token.

Ray 2.60's GCS and raylets listen on every interface (test_hardening_ray.py's xfail); what
keeps other machines out is the token. `palm cluster up` makes one where Ray reads it (here
the shell's ~/.ray/auth_token, HOME being a temporary folder: a token at the real one would
turn token mode on for every later Ray process of this user), mode 0600, and never prints it.
A caller without it is refused by the GCS, a raylet and the dashboard's API (gRPC
UNAUTHENTICATED, HTTP 401); one with it is served; `palm run`, `palm cluster status` and
`ray job submit` from a new shell of that user work; the token is in no file under the run
folder, the cluster's logs or Ray's session folder.
"""

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from tests.support.listening import public_listeners
from tests.support.local_cluster import BIN, running_cluster
from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]



def new_shell(home: Path) -> dict[str, str]:
    """A new login shell of a user whose home is `home`: no RAY_* variable at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(home), PATH=f"{BIN}:{env['PATH']}")
    return env


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """1 pod x 1 host x 4 chips, brought up from a new shell (no token anywhere yet)."""
    home = tmp_path_factory.mktemp("home")
    state_dir = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch:
        for var in [k for k in os.environ if k.startswith("RAY_AUTH")]:
            patch.delenv(var)
        for key, value in new_shell(home).items():
            patch.setenv(key, value)
        with running_cluster(state_dir, pods=1, hosts_per_pod=1, chips_per_host=4,
                             timeout_s=240, own_token=False) as state:
            token_file = home / ".ray" / "auth_token"
            yield state, state_dir, home, token_file.read_text().strip()


def gcs_call(address: str, token: str | None):
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        return stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=20,
                                 metadata=metadata)


def raylet_call(address: str, token: str | None):
    from ray.core.generated import node_manager_pb2, node_manager_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
        return stub.GetNodeStats(node_manager_pb2.GetNodeStatsRequest(), timeout=20,
                                 metadata=metadata)


def dashboard_call(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.timeout(300)
def test_cluster_up_makes_a_0600_token_where_ray_reads_it(token_cluster):
    state, _, home, token = token_cluster
    token_file = home / ".ray" / "auth_token"
    assert len(token) == 64 and int(token, 16) >= 0  # Ray's form: 256 random bits in hex
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert (home / ".ray").stat().st_mode & 0o077 == 0
    assert state.auth_mode == "token"


@pytest.mark.timeout(300)
def test_the_gcs_on_the_public_address_refuses_a_caller_without_the_token(token_cluster):
    state, _, _, token = token_cluster
    public = {s.port for s in public_listeners([n.pid for n in state.nodes])}
    host, port = state.gcs_address.rsplit(":", 1)
    assert int(port) in public and not host.startswith("127.")  # reachable from the network
    for wrong in (None, "0" * 64):
        with pytest.raises(grpc.RpcError) as refused:
            gcs_call(state.gcs_address, wrong)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert gcs_call(state.gcs_address, token).cluster_id  # the token is what opens it


@pytest.mark.timeout(300)
def test_a_raylet_refuses_a_caller_without_the_token(token_cluster):
    state, _, _, token = token_cluster
    host_node = next(n for n in state.nodes if n.name != "head")
    public = {s.port for s in public_listeners([host_node.pid])}
    assert host_node.node_manager_port in public
    raylet = f"{state.gcs_address.rsplit(':', 1)[0]}:{host_node.node_manager_port}"
    with pytest.raises(grpc.RpcError) as refused:
        raylet_call(raylet, None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raylet_call(raylet, token).num_workers >= 0


@pytest.mark.timeout(600)
def test_a_new_shell_submits_runs_and_reads_status_and_the_token_stays_out_of_files(
        token_cluster, tmp_path):
    state, state_dir, home, token = token_cluster
    jobs_url = f"{state.dashboard_url}/api/jobs/"
    assert dashboard_call(jobs_url, None) == 401
    assert dashboard_call(jobs_url, token) == 200
    shell = new_shell(home)

    # `ray job submit` as the README writes it: Ray 2.60's job CLI sends the token it finds
    # only in token mode, hence RAY_AUTH_MODE=token on its line (auth.SUBMIT_PREFIX).
    script = "import ray; ray.init(); print('TPU', ray.cluster_resources().get('TPU'))"
    submit = subprocess.run(["ray", "job", "submit", "--address", state.dashboard_url,
                             "--working-dir", ".", "--", "python", "-c", script],
                            cwd=tmp_path, env={**shell, "RAY_AUTH_MODE": "token"},
                            capture_output=True, text=True, timeout=240)
    assert submit.returncode == 0 and "TPU 4.0" in submit.stdout, (
        submit.stdout[-2000:] + submit.stderr[-2000:]
    )

    spec = yaml.safe_load((ROOT / "tests" / "jobs" / "ray-2host.yaml").read_text())
    spec["topology"].update(hosts_per_pod=1, chips_per_host=4)
    spec.update(run_dir=str(tmp_path / "run"))
    spec["checkpoint"]["directory"] = str(tmp_path / "ckpt")
    spec["train"]["steps"] = 3
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    run = subprocess.run([BIN / "palm", "run", str(job)], env={**shell, "RAY_ADDRESS":
                         state.gcs_address}, capture_output=True, text=True, timeout=480)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    status = subprocess.run([BIN / "palm", "status", str(tmp_path / "run" / spec["name"])],
                            env=shell, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    cluster_status = subprocess.run([BIN / "palm", "cluster", "status", "--dir", str(state_dir)],
                                    env=shell, capture_output=True, text=True, timeout=120)
    assert "auth: token" in cluster_status.stdout, cluster_status.stdout + cluster_status.stderr

    printed = submit.stdout + submit.stderr + run.stdout + run.stderr + status.stdout
    assert token not in printed + cluster_status.stdout
    folders = [tmp_path / "run", tmp_path / "ckpt", Path(state_dir), Path(state.temp_dir)]
    scanned = 0
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.is_socket():
                scanned += 1
                assert token.encode() not in path.read_bytes(), path
    assert scanned > 20  # the run's metrics, the nodes' logs, Ray's session logs
