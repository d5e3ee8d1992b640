"""The RAM tier on the local Ray cluster (the shared 1 pod x 2 fake hosts x 2 chips): a 1-pod
job loses host 1 (SIGKILL, its RAM folder gone with it), Ray Train restarts the group, and
host 1's shards come back from host 0's copy of its ring neighbour, not from persistent
storage; the run ends bitwise equal to a clean run of the same job, and gives its RAM back
(the host folders' stable names: test_local_tier_multiprocess.py)."""

import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from palm_platform.metrics.sink import read_records
from tests.support.local_cluster import BIN, driver_env, final_params
from tests.support.paths import TEST_JOBS

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multiprocess]

JOB = TEST_JOBS / "ray-2host.yaml"
STEPS, KILL_STEP = 12, 7


def write_job(folder: Path, *, ram: bool, inject: list[dict]) -> Path:
    spec = yaml.safe_load(JOB.read_text())
    spec["run_dir"] = str(folder / "run")
    # persistent: step 0 and the last only, so a restore in between can come from RAM alone
    spec["checkpoint"].update(directory=str(folder / "ckpt"), every_steps=100)
    if ram:
        spec["checkpoint"]["local"] = {"directory": str(folder / "ram"), "every_steps": 2}
    spec["faults"]["inject"] = inject
    spec["metrics"]["wandb_mode"] = "disabled"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def palm_run(cluster, job: Path) -> str:
    run = subprocess.run([BIN / "palm", "run", str(job)], env=driver_env(cluster),
                         capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    return output


@pytest.mark.timeout(1800)
def test_a_one_pod_job_losing_a_host_restores_from_the_neighbours_ram(local_cluster, tmp_path):
    clean = write_job(tmp_path / "clean", ram=False, inject=[])
    palm_run(local_cluster, clean)
    job = write_job(tmp_path / "ram-run", ram=True,
                    inject=[{"kind": "kill_host", "step": KILL_STEP, "host": 1}])
    output = palm_run(local_cluster, job)

    records = read_records(tmp_path / "ram-run" / "run" / "ray-2host")
    restored = [r for r in records if r["kind"] == "checkpoint_restored"]
    assert len(restored) == 1, output[-3000:]
    # the newest RAM step committed by both hosts before the kill (the save of step 6 may
    # still have been in flight), newer than persistent step 0
    assert restored[0]["step"] in (4, 6), restored
    assert restored[0]["tier"] == "peer", restored
    assert restored[0]["bytes_persistent"] == 0 and restored[0]["bytes_peer"] > 0
    assert [r["step"] for r in records if r["kind"] == "restart"] == [restored[0]["step"]]
    assert not (tmp_path / "ram-run" / "ram").exists()  # the finished run gave its RAM back
    expected, got = final_params(clean, STEPS), final_params(job, STEPS)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()
