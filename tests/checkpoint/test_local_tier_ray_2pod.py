"""The RAM tier on a 2-pod local Ray cluster (2 pods x 1 fake host x 4 chips): a host of pod 1
dies (SIGKILL, its RAM folder gone with it) after a RAM save newer than the persistent
checkpoint; Ray Train restarts the group and pod 1's shards come from pod 0's RAM (the state
is replicated over `pod`), with no byte read from persistent storage. The run ends bitwise
equal to the same job trained in one process (test_ray_promises.py shows a clean 2-pod Ray
run ends so)."""

import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from palm_platform.metrics.sink import read_records
from tests.support.local_cluster import BIN, driver_env, final_params, running_cluster
from tests.support.paths import TEST_JOBS

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multiprocess]

JOB = TEST_JOBS / "loop-2pod.yaml"  # 2 pods x 1 host x 4 chips
STEPS, KILL_STEP = 12, 7


@pytest.fixture(scope="module")
def two_pod_cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("cluster"), pods=2, hosts_per_pod=1,
                         chips_per_host=4, timeout_s=240) as state:
        yield state


def write_job(folder: Path, *, ram: bool, inject: list[dict]) -> Path:
    spec = yaml.safe_load(JOB.read_text())
    spec["name"] = "ram-2pod"
    spec["train"]["steps"] = STEPS
    spec["run_dir"] = str(folder / "run")
    spec["checkpoint"].update(directory=str(folder / "ckpt"), every_steps=100)
    if ram:
        spec["checkpoint"]["local"] = {"directory": str(folder / "ram"), "every_steps": 2}
    spec["faults"].update(max_restarts=2, hang_timeout_s=60, init_timeout_s=60, inject=inject)
    spec["metrics"]["wandb_mode"] = "disabled"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.timeout(1800)
def test_a_pod_1_host_lost_after_a_ram_save_resumes_from_pod_0s_ram(two_pod_cluster, tmp_path):
    job = write_job(tmp_path / "ram-run", ram=True,
                    inject=[{"kind": "kill_host", "step": KILL_STEP, "host": 1}])
    run = subprocess.run([BIN / "palm", "run", str(job)], env=driver_env(two_pod_cluster),
                         capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    records = read_records(tmp_path / "ram-run" / "run" / "ram-2pod")
    restored = [r for r in records if r["kind"] == "checkpoint_restored"]
    assert len(restored) == 1, output[-3000:]
    assert restored[0]["step"] in (4, 6) and restored[0]["tier"] == "peer", restored
    assert restored[0]["bytes_persistent"] == 0 and restored[0]["bytes_peer"] > 0

    from palm_platform.job import load_job
    from palm_platform.train.loop import Trainer

    clean = write_job(tmp_path / "clean", ram=False, inject=[])
    trainer = Trainer(load_job(clean), tmp_path / "clean" / "run" / "ram-2pod",
                      devices=jax.devices()[:8])
    try:
        trainer.run()
    finally:
        trainer.close()
    expected, got = final_params(clean, STEPS), final_params(job, STEPS)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()
