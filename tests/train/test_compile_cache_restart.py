"""A restart loads every train step from the persistent compilation cache, including the
batch sizes of the schedule the killed attempt never reached (compiled ahead of time)."""

import os
import shutil
from pathlib import Path

import pytest

from palm_platform.hook_protocol import Hook, StepInfo
from palm_platform.job import load_job
from palm_platform.job.train import BatchPhase
from palm_platform.metrics.sink import read_records
from palm_platform.train.loop import Trainer
from palm_platform.train.precompile import later_batch_sizes
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"


class HostLost(Exception):
    """Stands in for the killed host: the attempt ends mid-run, as under Ray."""


def test_later_batch_sizes_are_the_phases_still_ahead():
    phases = [BatchPhase(sequences=8, until_step=4), BatchPhase(sequences=16, until_step=9),
              BatchPhase(sequences=8)]
    def at(step):
        return next(p.sequences for p in phases if p.until_step is None or step < p.until_step)
    assert later_batch_sizes(at, [4, 9], first_step=0, last_step=20) == [16]
    assert later_batch_sizes(at, [4, 9], first_step=5, last_step=20) == [8]
    assert later_batch_sizes(at, [4, 9], first_step=0, last_step=4) == []  # the run ends first
    assert later_batch_sizes(at, [4, 9], first_step=10, last_step=20) == []


@pytest.mark.slow
@pytest.mark.usefixtures("own_compile_cache")  # its first attempt must compile, not load
def test_a_restart_after_a_kill_misses_no_train_step(tmp_path):
    shutil.copy(JOB, tmp_path / "job.yaml")
    job = load_job(tmp_path / "job.yaml")
    train = job.train.model_copy(update={"steps": 6, "batch_schedule": [
        BatchPhase(sequences=8, until_step=4), BatchPhase(sequences=16)]})
    checkpoint = job.checkpoint.model_copy(update={"every_steps": 2})
    job = job.model_copy(update={"train": train, "checkpoint": checkpoint})

    class KillAt3(Hook):
        def on_step(self, info: StepInfo) -> None:
            if info.step == 3:  # before the schedule reaches 16 sequences
                raise HostLost

    first = Trainer(job, Path(job.run_dir), attempt=0, hooks=(KillAt3(),))
    try:
        with pytest.raises(HostLost):
            first.run()
    finally:
        first.close()
    assert first.setup.compile_cache.counts()["misses"] >= 2  # both train steps were compiled

    second = Trainer(job, Path(job.run_dir), attempt=1)
    try:
        summary = second.run()
    finally:
        second.close()
    assert summary.steps == 6
    counts = second.setup.compile_cache.counts()
    assert counts["misses"] == 0 and counts["hits"] >= 2, counts
    records = read_records(Path(job.run_dir))
    # From the restart's restore on (its `restart` record follows its first step)
    restart = next(i for i, r in enumerate(records)
                   if r["kind"] == "checkpoint_restored" and r["attempt"] == 1)
    compiled = [r for r in records[restart:] if r["kind"] == "compiled"]
    assert sorted(r["batch_size"] for r in compiled) == [8, 16]
    assert all(r["cache_misses"] == 0 for r in compiled)


# Each process of a 2-process CPU run (gloo), started twice as a restart would: compiles one
# sharded step with the persistent cache on, and prints its hits and misses.
CACHE_WORKER = """
import os
import sys
import jax
import jax.numpy as jnp
import numpy as np
from palm_platform.train.compile_cache import CompileCache

port, pid, cache_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
every_process_writes = sys.argv[4] == "1"
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=60)
if every_process_writes:
    from palm_platform.compat.jax import cache_writes_from_every_process_on_cpu
    cache_writes_from_every_process_on_cpu()
cache = CompileCache.enable(cache_dir)
mesh = jax.sharding.Mesh([jax.local_devices(process_index=p)[0] for p in (0, 1)], ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
x = jax.make_array_from_process_local_data(sharding, np.ones((2, 8), np.float32))
jax.block_until_ready(jax.jit(lambda a: (a * 2).sum())(x))
counts = cache.counts()
sys.stdout.flush()  # one write of a whole line: gloo's C++ lines share this stdout
os.write(1, f"\\nCOUNTS {counts['hits']} {counts['misses']}\\n".encode())
"""


def _two_processes(cache_dir: Path, every_process_writes: bool) -> list[tuple[int, int]]:
    """(hits, misses) of process 0 and process 1 of one 2-process start."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", CACHE_WORKER, str(port), str(pid),
                               str(cache_dir), "1" if every_process_writes else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
             for pid in (0, 1)]
    counts = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("COUNTS"))
        counts.append(tuple(int(v) for v in line.split()[1:]))
    return counts


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
@pytest.mark.parametrize("every_process_writes", [True, False])
def test_every_process_hits_its_own_entries_after_a_restart_on_cpu(tmp_path, every_process_writes):
    # On CPU each process's cache key differs; JAX writes only process 0's entries, so
    # without compat/jax.py's cache_writes_from_every_process_on_cpu process 1 recompiles at
    # every restart.
    first = _two_processes(tmp_path, every_process_writes)
    assert all(misses >= 1 for _, misses in first), first
    (hits0, misses0), (hits1, misses1) = _two_processes(tmp_path, every_process_writes)
    assert (hits0, misses0) == (first[0][1], 0)  # process 0 always hits
    if every_process_writes:
        assert (hits1, misses1) == (first[1][1], 0)
    else:
        assert hits1 == 0 and misses1 == first[1][1]  # what JAX does alone: recompiles
