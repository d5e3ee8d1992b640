"""One job-to-launch translation: `LaunchSpec.for_job` for `palm run` and `palm eval --cluster`.

The rules follow the job file's fields to the values Ray and JAX get; no Ray is started
(the launches themselves are tests/cluster/test_ray_cluster.py and tests/eval/test_eval_cluster.py).
"""

import shutil

from palm_platform.compiler_flags import init_args
from palm_platform.job import load_job
from palm_platform.ray.launch_spec import HEARTBEAT_MARGIN_S, LaunchSpec
from tests.support.paths import TEST_JOBS

JOBS = TEST_JOBS


def job_in(tmp_path, name="ray-elastic.yaml"):
    shutil.copy(JOBS / name, tmp_path / "job.yaml")
    return load_job(tmp_path / "job.yaml")


def test_the_job_faults_become_the_failure_budgets_and_timeouts(tmp_path):
    job = job_in(tmp_path, "ray-2host.yaml")  # hang_timeout_s 20, init 60, max_restarts 3
    spec = LaunchSpec.for_job(job, tmp_path / "run")
    assert spec.max_failures == 3
    assert spec.jax_init_timeout_s == 60
    # JAX's heartbeat limit comes after the watchdog, which names the stuck host first.
    assert spec.jax_heartbeat_timeout_s == 20 + HEARTBEAT_MARGIN_S
    assert spec.shape == job.topology.shape()
    assert spec.libtpu_init_args == init_args(job.topology.effective_compiler_flags)
    assert spec.storage_path == str((tmp_path / "run" / "ray").resolve())
    assert spec.run_name.startswith("ray-2host-")


def test_an_eval_launch_has_the_jobs_heartbeat_rule_all_pods_and_no_restart(tmp_path):
    job = job_in(tmp_path)
    assert job.topology.shape().elastic  # the job may train on fewer pods ...
    train = LaunchSpec.for_job(job, tmp_path / "run")
    spec = LaunchSpec.for_job(job, tmp_path / "run", purpose="eval").on_all_pods()
    assert not spec.shape.elastic and spec.shape.pods == job.topology.pods  # ... eval: all
    assert spec.max_failures == 0
    assert spec.jax_heartbeat_timeout_s == train.jax_heartbeat_timeout_s != 100  # not Ray's
    assert spec.jax_init_timeout_s == train.jax_init_timeout_s
    assert spec.run_name.startswith(f"{job.name}-eval-")
