"""`ray job submit` exactly as the README writes it, across `palm cluster down && palm cluster up`.

A project folder with a job whose outputs are relative (`run_dir: ../runs`), submitted with
`ray job submit --working-dir . -- palm run --submit-dir "$PWD" jobs/tiny.yaml` from that
folder. The cluster is stopped while the job trains, started again, and the same command
submitted again: the run must resume from its newest checkpoint (not step 1), finish, and
`palm status runs/ray-2host` (in the project folder, not Ray's session copy) must see it.
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from palm_platform.cluster import local as cluster
from palm_platform.metrics.sink import read_records
from tests.support.local_cluster import BIN, running_cluster, wait_for_step
from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]

JOB = ROOT / "tests" / "jobs" / "ray-2host.yaml"
STEPS = 60  # ~0.4 s each; `palm cluster down` takes ~10 s to stop a job (about 20 steps)
# The README's line, unchanged; the shell expands $PWD on the submitting side. RAY_AUTH_MODE=
# token: Ray 2.60's job CLI sends the cluster's token (here the session's file, conftest) only
# in token mode, and `palm cluster up` starts clusters in token mode (platform/cluster/auth.py).
SUBMIT = ('RAY_AUTH_MODE=token ray job submit --working-dir . -- palm run --submit-dir "$PWD" '
          'jobs/tiny.yaml')


def cluster_cli(action: str, state_dir: Path) -> cluster.ClusterState | None:
    shape = (
        ["--pods", "1", "--hosts-per-pod", "2", "--chips-per-host", "2"] if action == "up" else []
    )
    done = subprocess.run([BIN / "palm", "cluster", action, *shape, "--dir", str(state_dir)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return cluster.load_state(cluster.state_path(state_dir))


def submit(project: Path, state: cluster.ClusterState, **popen) -> subprocess.Popen:
    # `ray job submit` finds the dashboard through RAY_API_SERVER_ADDRESS (the port may not
    # be 8265 when another cluster runs here); RAY_ADDRESS would point it at the GCS.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY_API_SERVER_ADDRESS=state.dashboard_url, PATH=f"{BIN}:{env['PATH']}")
    return subprocess.Popen(["bash", "-c", SUBMIT], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def steps_done(run_dir: Path) -> list[int]:
    if not (run_dir / "metrics.jsonl").exists():
        return []
    return [r["step"] for r in read_records(run_dir) if r["kind"] == "step"]


@pytest.mark.timeout(900)
def test_submit_twice_across_a_cluster_restart_resumes_from_the_checkpoint(tmp_path):
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    spec = yaml.safe_load(JOB.read_text())
    spec["train"]["steps"] = STEPS
    spec["run_dir"] = "../runs"  # relative: inside Ray's copy unless --submit-dir moves it
    spec["checkpoint"]["directory"] = "../runs/ray-2host/checkpoints"
    spec["metrics"]["wandb_mode"] = "disabled"
    (project / "jobs" / "tiny.yaml").write_text(yaml.safe_dump(spec))
    (project / ".gitignore").write_text("runs/\n")  # as the repository's: Ray does not upload it
    run_dir = project / "runs" / "ray-2host"
    state_dir = tmp_path / "cluster"
    # The shared fixture's cluster, stopped and started again on the same state folder (and
    # so the same Ray temp folder): its exit stops whichever cluster is up and removes it.
    with running_cluster(state_dir, pods=1, hosts_per_pod=2, chips_per_host=2,
                         timeout_s=240) as state:
        first = submit(project, state)
        wait_for_step(run_dir, 5, first, timeout_s=400)  # step 4's checkpoint is due
        cluster_cli("down", state_dir)  # the job dies with its cluster session
        try:
            first.wait(timeout=60)
        except subprocess.TimeoutExpired:  # the client may keep retrying the dead dashboard
            first.kill()
            first.wait()
        stopped_at = max(steps_done(run_dir))
        assert stopped_at < STEPS

        state = cluster_cli("up", state_dir)
        second = submit(project, state)
        output, _ = second.communicate(timeout=600)
        assert second.returncode == 0 and "succeeded" in output, output[-3000:]

    records = read_records(run_dir)
    resumed = [r["step"] for r in records if r["kind"] == "resume"]
    assert len(resumed) == 1 and 2 <= resumed[0] <= stopped_at, (resumed, stopped_at)
    assert "restart" not in {r["kind"] for r in records}
    second_steps = steps_done(run_dir)[steps_done(run_dir).index(stopped_at) + 1:]
    assert second_steps == list(range(resumed[0] + 1, STEPS + 1)), second_steps
    status = subprocess.run([BIN / "palm", "status", "runs/ray-2host"], cwd=project,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and f"steps {STEPS}" in status.stdout, (
        status.stdout + status.stderr
    )
