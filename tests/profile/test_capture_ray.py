"""A live capture of a job on the local Ray cluster: `palm profile` reaches the running workers
through Ray's GCS store, both hosts trace the steps host 0 broadcast, and the report has a
column per host and a straggler line. Bad requests get one line and exit 2, and the job trains
on to its last step.
"""

import subprocess
import time

import pytest
import yaml

from palm_platform.profile.request import listening_path
from tests.support.local_cluster import BIN, driver_env
from tests.support.paths import TEST_JOBS

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.mark.timeout(600)
def test_a_live_request_traces_every_host_from_one_agreed_step(local_cluster, tmp_path):
    spec = yaml.safe_load((TEST_JOBS / "ray-2host.yaml").read_text())
    spec.update(run_dir=str(tmp_path / "run"), profile={"poll_every": 2})
    spec["train"]["steps"] = 60
    spec["checkpoint"].update(directory=str(tmp_path / "ckpt"), every_steps=20)
    spec["data"] = {"store": str(tmp_path / "store")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    run = tmp_path / "run" / "ray-2host"
    env = driver_env(local_cluster)
    job = subprocess.Popen([BIN / "palm", "run", str(tmp_path / "job.yaml")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not listening_path(run).exists():
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
            time.sleep(0.5)
        bad = subprocess.run([BIN / "palm", "profile", str(run), "--hosts", "0,2"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [
            "palm profile: --hosts: host 2 is out of range (this run has hosts 0 to 1)"]
        asked = subprocess.run([BIN / "palm", "profile", str(run), "--steps", "2"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert asked.returncode == 0, asked.stderr[-3000:]
        table = asked.stdout
        assert "host 0" in table and "host 1" in table and "straggler: host" in table
        assert "every host agreed to trace steps" in asked.stderr
        assert "(pid=" not in asked.stdout + asked.stderr  # none of Ray's streamed lines
        assert job.wait(timeout=300) == 0  # the job trained on to its last step
    finally:
        if job.poll() is None:
            job.kill()
    firsts = [p.name for p in (run / "profile").glob("step-*")]
    assert len(firsts) == 1
    for host in (0, 1):
        assert (run / "profile" / firsts[0] / f"host-{host}" / "steps.json").exists()
    ended = subprocess.run([BIN / "palm", "profile", str(run)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert ended.returncode == 2 and "not running" in ended.stderr
