"""`palm run` and `ray job submit` of job files on a real local Ray cluster of fake TPU hosts.

One cluster (1 pod x 2 hosts x 2 chips) for the module. The reference run goes through
`ray job submit` of the executable job file; a second run of the same job, checkpointing to
gs:// on the local GCS emulator, loses a worker process (killed by PID) and has a host hang,
and must still end with the same parameters, bit for bit.
"""

import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from palm_platform.metrics.events import describe_event
from palm_platform.metrics.sink import read_records
from palm_platform.metrics.status import ON_THE_BAR
from palm_platform.ray.worker_output import LOG_FILE
from tests.support.local_cluster import (
    BIN,
    driver_env,
    final_params,
    kill_a_train_worker_after_step,
)
from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]

JOB = ROOT / "tests" / "jobs" / "ray-2host.yaml"


def write_job(folder: Path, **changes) -> Path:
    """The test job with absolute paths (a submitted job runs in a copy of its working dir)."""
    spec = yaml.safe_load(JOB.read_text())
    spec["run_dir"] = str(folder / "run")
    spec["checkpoint"]["directory"] = str(folder / "ckpt")
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text("#!/usr/bin/env -S palm run\n" + yaml.safe_dump(spec))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def reference(local_cluster, tmp_path_factory):
    """`ray job submit --working-dir DIR -- ./job.yaml`: the job file is the entrypoint."""
    folder = tmp_path_factory.mktemp("reference")
    write_job(folder, data={"store": str(folder / "store")})  # no store yet: palm run makes it
    submit = subprocess.run(
        [BIN / "ray", "job", "submit", "--address", local_cluster.dashboard_url,
         "--working-dir", str(folder), "--", "./job.yaml"],
        capture_output=True, text=True, timeout=600, env=driver_env(local_cluster),
    )
    assert submit.returncode == 0 and "succeeded" in submit.stdout, (
        submit.stdout[-3000:] + submit.stderr[-2000:]
    )
    (folder / "submit.log").write_text(submit.stdout)
    return folder


def worker_log(run_dir: Path) -> str:
    """Every line the driver received from the workers (ray/worker_output.py's log file)."""
    return (run_dir / "logs" / LOG_FILE).read_text()


def worker_lines(run_dir: Path) -> list[str]:
    """Lines our loggers wrote in a Ray Train worker, as the driver logged them."""
    return [ln for ln in worker_log(run_dir).splitlines()
            if "RayTrainWorker" in ln and " palm" in ln]


def test_each_worker_log_line_is_printed_once(reference):
    # Every fake host's node shares one session log folder: with a log monitor per node,
    # each line would reach the driver once per node.
    output = (reference / "submit.log").read_text()
    lines = worker_lines(reference / "run" / "ray-2host")
    assert any("step 12/12" in ln for ln in lines), lines[-20:]
    repeated = [ln for ln, n in Counter(lines).items() if n > 1]
    assert not repeated, repeated[:5]
    # The terminal shows none of them with Ray's prefix (palm's warnings only, as messages).
    assert "RayTrainWorker" not in output, output[-2000:]
    # Nor lines of other processes: libtpu's logs of whoever ran `palm plan` on this machine
    # (Ray's log monitor streams /tmp/tpu_logs unless the node has a TPU_LOG_DIR of its own).
    logged = worker_log(reference / "run" / "ray-2host")
    foreign = [ln for ln in (output + logged).splitlines() if "(pid=)" in ln]
    assert not foreign, foreign[:5]
    # Nor gloo's line per communicator ("[Gloo] Rank 1 is connected to 3 peer ranks ...").
    gloo = [ln for ln in (output + logged).splitlines() if "peer ranks" in ln or "[Gloo]" in ln]
    assert not gloo, gloo[:5]
    # Each event once: the driver's sentence, not also the worker's log line of it. The end
    # summary (after the "run DIR" header) recaps some on purpose, so only the live part counts.
    run_dir = reference / "run" / "ray-2host"
    live = output.split(f"run {run_dir}")[0].splitlines()
    events = [r for r in read_records(run_dir) if r["kind"] not in ON_THE_BAR | {"eval"}]
    assert events, "the reference run recorded no events"
    for record in events:
        start = describe_event(record)[:40]  # the live view may wrap a long sentence
        seen = [ln for ln in live if start in ln]
        assert len(seen) == 1, (start, seen)


@pytest.mark.timeout(700)
def test_submitted_job_file_trains_to_its_last_step(reference):
    # The driver prepared the job's token store on the cluster's CPUs first, then trained.
    log = (reference / "submit.log").read_text()
    assert "preparing it on the cluster's CPUs" in log and "token store ready" in log, log[-3000:]
    assert (reference / "store" / "manifest.json").is_file()
    records = read_records(reference / "run" / "ray-2host")
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert {"loss", "z_loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu", "step_s"} <= set(
        steps[0]
    )
    assert any(r["kind"] == "start" for r in records)


@pytest.mark.timeout(900)
def test_killed_and_hung_hosts_restart_from_gs_and_end_bitwise_equal(
    local_cluster, reference, gcs_bucket, tmp_path
):
    # The pod jobs' storage path on a local GCS emulator (`palm run` forwards the emulator's
    # variables to the workers, storage/env.py). A worker is killed by PID once step 3 is
    # done, and host 1 hangs at step 8 (the watchdog turns it into a restart): each time the
    # group restarts from the newest gs:// checkpoint and must end as the local-disk run did.
    # (One run for both faults and the gs:// path: each `palm run` here costs ~30 s of start-up.)
    directory = f"{gcs_bucket}/ray-2host/ckpt"
    job = write_job(tmp_path, checkpoint={"directory": directory},
                    faults={"inject": [{"kind": "hang_host", "step": 8, "host": 1}]})
    # An old libtpu log where Ray looks by default (`palm plan` writes there): Ray streams that
    # folder to every driver unless `palm run` keeps it out (ray/worker_output.py).
    tpu_logs = Path(tempfile.gettempdir()) / "tpu_logs"
    tpu_logs.mkdir(exist_ok=True)
    old_log = tpu_logs / f"palm-test-{os.getpid()}.log"
    old_log.write_text("OLD-LIBTPU-LINE from an earlier palm plan\n")
    env = {k: v for k, v in driver_env(local_cluster).items() if k != "TPU_LOG_DIR"}
    try:
        run = subprocess.Popen([BIN / "palm", "run", str(job)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        kill_a_train_worker_after_step(local_cluster, run, tmp_path / "run" / "ray-2host", 3)
        output, _ = run.communicate(timeout=600)
    finally:
        old_log.unlink()
    assert "OLD-LIBTPU-LINE" not in output + worker_log(tmp_path / "run" / "ray-2host")
    assert run.returncode == 0, output[-4000:]
    records = read_records(tmp_path / "run" / "ray-2host")
    assert sum(r["kind"] == "restart" for r in records) == 2, output[-3000:]
    assert "restarts 2" in output
    # One line per restore, from host 0 (not one per host, nor one per log monitor).
    restored = [ln for ln in worker_lines(tmp_path / "run" / "ray-2host")
                if "restored checkpoint step" in ln]
    assert len(restored) == 2, restored
    # The killed host's peers fail in a gloo collective: one line each, not Ray's traceback
    # (worker.py's peer-loss exit); the hang's thread dump is not a "Traceback" either.
    assert "Traceback (most recent call last)" not in output, output[-4000:]
    # Resumed from gs:// checkpoints (every 2 steps), not from scratch: the one before the
    # hang at step 8 is at least step 4 whichever saves had committed.
    resumed = [r["step"] for r in records if r["kind"] == "checkpoint_restored"]
    assert resumed and 4 <= resumed[-1] <= 8 and all(s % 2 == 0 for s in resumed), resumed

    from palm_platform.checkpoint import list_checkpoints

    assert [i.step for i in list_checkpoints(directory) if i.complete][-1] == 12
    assert not (tmp_path / "ckpt").exists()  # nothing went to local disk instead
    expected, got = (final_params(folder / "job.yaml", 12) for folder in (reference, tmp_path))
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(120)
def test_job_that_needs_more_pods_than_the_cluster_has_fails_fast(local_cluster, tmp_path):
    job = write_job(tmp_path, topology={"pods": 2})
    start = time.monotonic()
    run = subprocess.run([BIN / "palm", "run", str(job)], env=driver_env(local_cluster),
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 1
    assert "cannot start" in run.stderr and "pod" in run.stderr, run.stderr
    assert time.monotonic() - start < 60


def test_malformed_job_file_names_file_field_and_fix(tmp_path):
    job = write_job(tmp_path, train={"steps": -1}, mesh={"modle": 2})
    run = subprocess.run(
        [BIN / "palm", "run", str(job)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert str(job) in run.stderr
    assert "field train.steps" in run.stderr and "field mesh.modle" in run.stderr
    assert "Fix:" in run.stderr


def test_missing_data_path_fails_before_any_worker_starts(tmp_path):
    job = write_job(
        tmp_path, data={"sources": [{"name": "web", "paths": ["nothere/*.jsonl"], "weight": 1}]}
    )
    run = subprocess.run(
        [BIN / "palm", "run", str(job)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},
    )  # no cluster is needed
    assert run.returncode == 2
    assert (
        "data.sources[0].paths[0]" in run.stderr
        and "nothere" in run.stderr
        and "Fix:" in run.stderr
    )


LIST_KEYS = """
from ray.experimental.internal_kv import _internal_kv_list
from palm_platform.ray.launch import connect
connect(log_to_driver=False)
for prefix in ("stop/", "alive/", "warm/"):
    for key in _internal_kv_list(prefix, namespace="palm"):
        print(key.decode())
"""


def launch_keys(cluster) -> set[str]:
    """The keys `palm run` launches keep in the cluster's GCS store (namespace palm)."""
    listed = subprocess.run([BIN / "python", "-c", LIST_KEYS], env=driver_env(cluster),
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return set(listed.stdout.split())


@pytest.mark.timeout(900)
def test_crashed_process_restarts_warm_and_a_failing_warm_restart_falls_back_once(
    local_cluster, reference, tmp_path
):
    # Warm hosts (ray/host_agent.py): host 1's JAX process crashes at step 4 and at step 9;
    # each time the host agents restart the JAX processes in place (same actors). Then its
    # next generation crashes again at step 9 before getting past it: a crash loop, so the
    # agents fall back to one worker-group restart, which finishes the run. It ends with the
    # reference run's parameters, bit for bit.
    crash = {"kind": "crash_process", "host": 1}
    job = write_job(tmp_path, faults={"warm_hosts": True, "inject": [
        {**crash, "step": 4}, {**crash, "step": 9}, {**crash, "step": 9}]})
    run_dir = tmp_path / "run" / "ray-2host"
    keys_before = launch_keys(local_cluster)
    run = subprocess.run([BIN / "palm", "run", str(job)], env=driver_env(local_cluster),
                         capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    # The launch's keys in Ray's GCS store (stop request, liveness, the agents' generations)
    # went with it (ray/interrupt.py, forget_launch).
    assert launch_keys(local_cluster) <= keys_before
    lines = worker_lines(run_dir)
    warm = [ln for ln in lines if "ready to restart the JAX processes warm" in ln]
    # both hosts' agents, twice each (generations 1 and 2), each keeping its pid
    assert sorted(re.search(r"(host \d)/2", ln)[1] + re.search(r"generation (\d)", ln)[1]
                  for ln in warm) == ["host 01", "host 02", "host 11", "host 12"], warm
    for index in (0, 1):
        pids = {re.search(r"agent pid (\d+)", ln)[1] for ln in warm if f"host {index}/2" in ln}
        assert len(pids) == 1, warm
    # One line per warm restart for the terminal (host 0's agent), naming the first failure.
    said = [ln for ln in output.splitlines() if "restarting the JAX processes warm" in ln]
    assert len(said) == 2 and all("every host is up" in ln and "JAX process" in ln
                                  for ln in said), said
    fallback = [ln for ln in lines if "falling back to a worker-group restart" in ln]
    assert fallback and all("did not get past step" in ln for ln in fallback), lines[-20:]
    records = read_records(run_dir)
    # generations 1 and 2 and the group's restart; generation 2 writes its `restart` record
    # only if it restored a step before 8 (it then finishes steps before crashing again)
    assert sum(r["kind"] == "restart" for r in records) in (3, 4), output[-3000:]
    assert max(r["step"] for r in records if r["kind"] == "step") == 12
    expected, got = (final_params(folder / "job.yaml", 12) for folder in (reference, tmp_path))
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
