"""`palm data prepare` on a real Ray cluster (the module's `palm cluster up`: 2 fake hosts of
1 CPU each): the store is the same for 1 and 2 workers as in one process, and a worker
killed mid-shard is retried with an identical result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_data_prepare import REPO, _documents, _jsonl_lines, _write_parquet

from palm_platform.data import prepare, store
from palm_platform.data.config import DataConfig, SourceConfig
from tests.support.local_cluster import BIN, driver_env

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _corpus(tmp_path: Path) -> list[SourceConfig]:
    """Small files grouped, a big JSONL cut into ranges, Parquet row groups: many units."""
    (tmp_path / "small").mkdir()
    for i in range(10):
        (tmp_path / "small" / f"{i}.jsonl").write_bytes(_jsonl_lines(_documents(8, i)))
    (tmp_path / "big.jsonl").write_bytes(_jsonl_lines(_documents(200, 50), bad_every=17))
    _write_parquet(tmp_path / "rows.parquet", _documents(200, 60), row_group_size=25)
    return [SourceConfig(name="small", paths=["small"], weight=1),
            SourceConfig(name="big", paths=["big.jsonl"], weight=1),
            SourceConfig(name="rows", paths=["rows.parquet"], weight=1)]


def _config(tmp_path: Path, sources: list[SourceConfig], store_dir: str,
            unit_mb: float = 0.004) -> DataConfig:
    return DataConfig(sources=sources, store=str(tmp_path / store_dir),
                      cache_dir=str(tmp_path / "cache"), prepare={"unit_mb": unit_mb})


def _job(tmp_path: Path, config: DataConfig, name: str) -> Path:
    job = yaml.safe_load((REPO / "jobs" / "local-cpu.yaml").read_text())
    job["data"] = json.loads(config.model_dump_json(exclude_defaults=True))
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(job))
    return tmp_path / f"{name}.yaml"


def _palm_prepare(cluster, job: Path, workers: int) -> subprocess.Popen:
    """`palm data prepare JOB --workers N --json` aimed at the module's cluster."""
    return subprocess.Popen([BIN / "palm", "data", "prepare", str(job), "--workers",
                             str(workers), "--json"], env=driver_env(cluster),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(driver: subprocess.Popen) -> tuple[dict, str]:
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _tokens(root: str, names: list[str]) -> list[np.ndarray]:
    token_store = store.TokenStore.open(root)
    return [token_store.source(name)[:] for name in names]


def test_one_and_two_workers_make_the_in_process_store(local_cluster, tmp_path):
    sources = _corpus(tmp_path)
    names = [s.name for s in sources]
    here = prepare.prepare_store(_config(tmp_path, sources, "here"), tmp_path, in_process=True,
                                 progress=False)
    assert here.shards > 8
    runs = {}
    for workers in (1, 2):
        job = _job(tmp_path, _config(tmp_path, sources, f"w{workers}"), f"w{workers}")
        runs[workers], err = _result(_palm_prepare(local_cluster, job, workers))
        assert (runs[workers]["written"], runs[workers]["shards"]) == (here.shards, here.shards)
        assert runs[workers]["digest"] == here.digest
        assert "bad records" in err and "big.jsonl:" in err
        assert "core_worker.cc" not in err  # Ray's C++ warning lines stay in its logs
    for a, b, c in zip(_tokens(here.root, names), _tokens(str(tmp_path / "w1"), names),
                       _tokens(str(tmp_path / "w2"), names), strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def _blocked_on_fifo(pid: int) -> bool:
    """Some thread of `pid` waits in open() for a FIFO's writer (the kernel's wait)."""
    for wchan in Path(f"/proc/{pid}/task").glob("*/wchan"):
        try:
            if "partner" in wchan.read_text() or "fifo" in wchan.read_text():
                return True
        except OSError:
            pass
    return False


def _shard_worker_pids(cluster) -> list[int]:
    """The prepare job's worker processes (ShardWorker actors) under the cluster's nodes."""
    import psutil

    ours, found = {n.pid for n in cluster.nodes}, []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "ShardWorker" in " ".join(process.info["cmdline"] or []) and \
                    ours & {p.pid for p in process.parents()}:
                found.append(process.pid)
        except psutil.Error:
            pass
    return found


def _blocked_worker(cluster) -> int | None:
    return next((pid for pid in _shard_worker_pids(cluster) if _blocked_on_fifo(pid)), None)


def test_a_worker_killed_mid_shard_is_retried_with_the_same_result(local_cluster, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.txt").write_text(_documents(1, i)[0] * 30)
    fifo = data / "9-last.txt"
    os.mkfifo(fifo)  # its unit's read blocks in open() (no writer ever comes): mid-shard
    sources = [SourceConfig(name="t", paths=["data"], weight=1)]
    driver = _palm_prepare(local_cluster, _job(tmp_path, _config(
        tmp_path, sources, "store", unit_mb=0.0001), "job"), workers=1)
    # Up to 300 s: on 2 loaded cores Ray took 3 minutes to start the actor. The driver is
    # killed before its stderr is read (a live driver's stderr would block the read forever).
    deadline, pid = time.monotonic() + 300, None
    while pid is None:
        if time.monotonic() > deadline or driver.poll() is not None:
            driver.kill()
            pytest.fail(f"no worker blocked mid-shard: {driver.communicate()[1][-3000:]}")
        pid = _blocked_worker(local_cluster)
        time.sleep(0.3)
    assert len(list((tmp_path / "store" / "t").glob("*.json"))) == 3  # committed before it
    os.kill(pid, signal.SIGKILL)
    # The restarted worker's retry (seconds later: a new process) finds a plain file there.
    (data / "last.tmp").write_text("the last document, read by the retried task")
    os.replace(data / "last.tmp", fifo)
    result, _ = _result(driver)
    assert (result["shards"], result["written"], result["skipped"]) == (4, 4, 0)
    assert not _shard_worker_pids(local_cluster)  # the job's workers are gone
    reference = prepare.prepare_store(_config(tmp_path, sources, "reference", unit_mb=0.0001),
                                      tmp_path, in_process=True, progress=False)
    assert reference.digest == result["digest"]
    assert np.array_equal(_tokens(reference.root, ["t"])[0],
                          _tokens(str(tmp_path / "store"), ["t"])[0])


def _job_blocked_on_its_last_unit(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """(job, fifo): three small files, then a FIFO whose read blocks until it is written, so
    a prepare of the job is mid-shard until the test lets it go on."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.txt").write_text(_documents(1, seed + i)[0] * 30)
    fifo = data / "9-last.txt"
    os.mkfifo(fifo)
    sources = [SourceConfig(name="t", paths=["data"], weight=1)]
    return _job(tmp_path, _config(tmp_path, sources, "store", unit_mb=0.0001), "job"), fifo


def _wait_until_mid_shard(cluster, tmp_path: Path, driver: subprocess.Popen,
                          timeout_s: float) -> None:
    """Until 3 shards are committed and a worker blocks in the last unit's read."""
    deadline = time.monotonic() + timeout_s
    while len(list((tmp_path / "store" / "t").glob("*.json"))) < 3 \
            or _blocked_worker(cluster) is None:
        assert time.monotonic() < deadline and driver.poll() is None, driver.stderr.read()
        time.sleep(0.3)


def _rerun_redoes_only_the_last_shard(cluster, job: Path, fifo: Path, workers: int) -> None:
    """No shard worker is left running; with the last unit readable, a rerun skips the 3
    committed shards and writes the last one only."""
    deadline = time.monotonic() + 60
    while _shard_worker_pids(cluster):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    fifo.unlink()
    fifo.write_text("the last document")
    result, _ = _result(_palm_prepare(cluster, job, workers=workers))
    assert (result["shards"], result["skipped"], result["written"]) == (4, 3, 1)


def test_a_killed_driver_leaves_no_worker_and_its_rerun_redoes_nothing(local_cluster, tmp_path):
    job, fifo = _job_blocked_on_its_last_unit(tmp_path, 10)
    driver = _palm_prepare(local_cluster, job, workers=2)
    _wait_until_mid_shard(local_cluster, tmp_path, driver, timeout_s=180)
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    _rerun_redoes_only_the_last_shard(local_cluster, job, fifo, workers=2)  # Ray ends its actors


def test_ctrl_c_stops_the_workers_and_says_how_to_resume(local_cluster, tmp_path):
    job, fifo = _job_blocked_on_its_last_unit(tmp_path, 20)  # mid-shard when stopped
    driver = subprocess.Popen([BIN / "palm", "data", "prepare", str(job), "--workers", "1"],
                              env=driver_env(local_cluster), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _wait_until_mid_shard(local_cluster, tmp_path, driver, timeout_s=300)
    driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "core_worker.cc" not in err
    line = err.strip().splitlines()[-1]
    assert "3 of 4 shards committed" in line and f"palm data prepare {job}" in line, line
    _rerun_redoes_only_the_last_shard(local_cluster, job, fifo, workers=1)  # stopped, not left
