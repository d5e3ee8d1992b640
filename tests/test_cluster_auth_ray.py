"""The local cluster with Ray's token authentication (platform/ray/auth.py), on a real cluster.

Ray 2.60's GCS and raylets listen on every interface (test_hardening_ray.py's xfail); what
keeps other machines out is the token. A cluster started from a shell that exports
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN refuses, on its public address, a caller without the
token (gRPC UNAUTHENTICATED, HTTP 401) and serves one with it; `ray job submit` as the README
writes it works from that shell.
"""

import os
import secrets
import subprocess
import urllib.error
import urllib.request

import grpc
import pytest

from palm_platform.ray.listening import public_listeners
from palm_platform.ray.local_cluster import BIN, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TOKEN = secrets.token_hex(16)


def shell_env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    if token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """The shared fixture's cluster, brought up from a shell that exports the token."""
    state_dir = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in shell_env(TOKEN).items():
            patch.setenv(key, value)
        with running_cluster(state_dir, pods=1, hosts_per_pod=1, chips_per_host=4,
                             timeout_s=240) as state:
            status = subprocess.run([BIN / "palm", "cluster", "status", "--dir", str(state_dir)],
                                    capture_output=True, text=True, timeout=120)
            yield state, state_dir, status.stdout


def gcs_call(address: str, token: str | None):
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        return stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=20,
                                 metadata=metadata)


@pytest.mark.timeout(300)
def test_the_gcs_on_the_public_address_refuses_a_caller_without_the_token(token_cluster):
    state, _, printed = token_cluster
    assert "auth: token" in printed
    public = {s.port for s in public_listeners([n.pid for n in state.nodes])}
    host, port = state.gcs_address.rsplit(":", 1)
    assert int(port) in public and not host.startswith("127.")  # reachable from the network
    for token in (None, "not-" + TOKEN):
        with pytest.raises(grpc.RpcError) as refused:
            gcs_call(state.gcs_address, token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert gcs_call(state.gcs_address, TOKEN).cluster_id  # the token is what opens it


@pytest.mark.timeout(300)
def test_job_submission_needs_the_token(token_cluster, tmp_path):
    state, state_dir, _ = token_cluster
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{state.dashboard_url}/api/jobs/", timeout=20)
    assert refused.value.code == 401
    script = "import ray; ray.init(); print('TPU', ray.cluster_resources().get('TPU'))"
    env = {**shell_env(TOKEN), "RAY_API_SERVER_ADDRESS": state.dashboard_url}
    submit = subprocess.run(["ray", "job", "submit", "--working-dir", ".", "--", "python", "-c",
                             script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert submit.returncode == 0 and "TPU 4.0" in submit.stdout, submit.stdout[-2000:] + submit.stderr[-2000:]
    status = subprocess.run([BIN / "palm", "cluster", "status", "--dir", str(state_dir)],
                            env=shell_env(None), capture_output=True, text=True, timeout=120)
    assert "auth: token" in status.stdout, status.stdout + status.stderr
