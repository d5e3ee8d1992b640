"""A local fake-TPU cluster for a test module or a benchmark, and the train workers on it.

Tests and benchmarks bring a cluster up through the real CLI (`palm cluster up`, so the
command users run is what they exercise), drive `palm run` against it, and sometimes kill
one train worker by its PID mid-run. These are the shared pieces; tests/conftest.py wraps
`running_cluster` as the `local_cluster` fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from palm_platform.cluster import local as cluster
from palm_platform.cluster.state import ClusterState
from tests.support.tiers import require_marker

BIN = Path(sys.executable).parent  # this environment's `palm`, `ray` and `python`


@contextmanager
def running_cluster(state_dir: Path, *, pods: int, hosts_per_pod: int, chips_per_host: int,
                    timeout_s: float = 300, own_token: bool = True) -> Iterator[ClusterState]:
    """`palm cluster up` in `state_dir`; on exit `down` and its Ray temp folder removed.

    The cluster is in token mode (platform/cluster/auth.py). With `own_token` and no token at hand,
    it gets a throwaway one (RAY_AUTH_TOKEN_PATH in a temporary folder for the duration, inherited
    by
    `palm cluster up` and the drivers): `palm cluster up` would otherwise make the user's
    ~/.ray/auth_token, which turns token mode on for every later Ray process of the user.
    """
    require_marker("ray", "a test that starts a local Ray cluster")
    with _throwaway_token() if own_token else nullcontext():
        yield from _running_cluster(state_dir, pods=pods, hosts_per_pod=hosts_per_pod,
                                    chips_per_host=chips_per_host, timeout_s=timeout_s)


@contextmanager
def _throwaway_token() -> Iterator[None]:
    from palm_platform.cluster import auth

    if auth.token_at_hand():
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="palm-ray-token-"))
    saved = os.environ.get(auth.TOKEN_PATH_VAR)
    os.environ[auth.TOKEN_PATH_VAR] = str(folder / "auth_token")
    try:
        auth.prepare_cluster_auth()  # makes the file, 0600, before any Ray process looks
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for var, value in ((auth.TOKEN_PATH_VAR, saved), (auth.MODE_VAR, None)):
            os.environ.pop(var, None)
            if value is not None:
                os.environ[var] = value


def _running_cluster(state_dir: Path, *, pods: int, hosts_per_pod: int, chips_per_host: int,
                     timeout_s: float) -> Iterator[ClusterState]:
    up = subprocess.run([BIN / "palm", "cluster", "up", "--pods", str(pods), "--hosts-per-pod",
                         str(hosts_per_pod), "--chips-per-host", str(chips_per_host), "--dir",
                         str(state_dir)], capture_output=True, text=True, timeout=timeout_s)
    state = cluster.load_state(cluster.state_path(state_dir))
    try:
        if up.returncode != 0:
            raise RuntimeError(f"palm cluster up failed ({up.returncode}):\n"
                               f"{up.stdout[-3000:]}{up.stderr[-3000:]}")
        yield state
    finally:
        if "ray" in sys.modules:  # a driver connected in this process lets go first
            import ray

            ray.shutdown()
        cluster.down(state_dir)
        if state is not None:
            shutil.rmtree(state.temp_dir, ignore_errors=True)


def driver_env(state: ClusterState) -> dict[str, str]:
    """Environment for a `palm run` / `ray job submit` subprocess aimed at the cluster (in
    token mode: Ray's job CLI sends the token only then, auth.SUBMIT_PREFIX)."""
    mode = {"RAY_AUTH_MODE": "token"} if state.auth_mode == "token" else {}
    return {**os.environ, "RAY_ADDRESS": state.gcs_address,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **mode}


def train_workers(state: ClusterState) -> list:
    """The Ray Train worker processes (psutil.Process) running under this cluster's nodes."""
    import psutil

    ours = {n.pid for n in state.nodes}
    return [proc for proc in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(proc.info["cmdline"] or [])
            and any(p.pid in ours for p in proc.parents())]


def wait_for_step(run_dir: Path, step: int, run: subprocess.Popen, timeout_s: float) -> None:
    """Return once the run's metrics show `step` trained; raise if the run ends or time is up."""
    from palm_platform.metrics.sink import METRICS_FILE, read_records

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (Path(run_dir) / METRICS_FILE).exists() and any(
            r.get("kind") == "step" and r.get("step", 0) >= step for r in read_records(run_dir)
        ):
            return
        if run.poll() is not None:
            output = run.stdout.read()[-4000:] if run.stdout else ""
            raise RuntimeError(f"the run exited ({run.returncode}) before step {step}\n{output}")
        time.sleep(0.5)
    raise TimeoutError(f"no step {step} in {run_dir} within {timeout_s:.0f} s")


def kill_a_train_worker_after_step(state: ClusterState, run: subprocess.Popen, run_dir: Path,
                                   step: int, timeout_s: float = 400):
    """Once `step` is trained, SIGKILL the last train worker by its PID; return its process.

    Killing by PID (never by name) keeps other clusters on the machine untouched.
    """
    wait_for_step(run_dir, step, run, timeout_s)
    victims = train_workers(state)
    hosts = state.pods * state.hosts_per_pod
    if len(victims) != hosts:
        raise RuntimeError(f"expected {hosts} train workers, found {len(victims)}: {victims}")
    os.kill(victims[-1].pid, signal.SIGKILL)
    return victims[-1]


def kill_times(run_dir: Path) -> list[float]:
    """When each kill_host fault of a run killed its process (Unix times, oldest first): the
    fault writes its marker durably just before its SIGKILL (supervise/faults.py)."""
    return sorted(m.stat().st_mtime for m in (Path(run_dir) / "faults").glob("*-kill_host-*.fired"))


def first_step_after_restart(records: list[dict], killed_at: float) -> tuple[dict, dict] | None:
    """(the restarted group's `checkpoint_restored` record after a kill at `killed_at`, the
    first step it completed), or None. Not simply the first step record after the kill: the
    loop logs step k after dispatching k+1, so the old group's last step can be logged after
    the kill. (Not the `restart` record: it is written at that first step, with its account.)"""
    restart = next((r for r in records if r["kind"] == "checkpoint_restored"
                    and r.get("attempt", 0) > 0 and r["time"] > killed_at), None)
    if restart is None:
        return None
    after = next((r for r in records if r["kind"] == "step" and r["time"] >= restart["time"]), None)
    return None if after is None else (restart, after)


def final_params(job_path: Path, expected_step: int):
    """The parameters of a run's newest checkpoint, restored in this process on the job's mesh
    (numpy arrays), for bitwise comparisons between runs. Needs the job's chip count of local
    devices (the tests' 8 fake CPU devices)."""
    import jax
    import numpy as np

    from palm_platform.checkpoint import Checkpointer
    from palm_platform.job import load_job
    from palm_platform.mesh import make_mesh
    from palm_platform.train.optimizer import build_optimizer
    from palm_platform.train.state import state_shardings

    job = load_job(job_path)
    topo = job.topology
    mesh = make_mesh(topo.pods, job.data_parallel, job.mesh.model,
                     jax.devices()[: topo.pods * topo.chips_per_pod])
    abstract, _ = state_shardings(job.model.build(), build_optimizer(job.optimizer)[0], mesh)
    checkpointer = Checkpointer(job.checkpoint, directory=job.checkpoint.directory)
    try:
        restored = checkpointer.restore(abstract)
    finally:
        checkpointer.close()
    if restored.step != expected_step:
        raise AssertionError(f"{job_path}: newest checkpoint is step {restored.step}, "
                             f"expected {expected_step}")
    return jax.tree.map(np.asarray, restored.train_state.params)
