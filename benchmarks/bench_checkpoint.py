"""Checkpoint throughput next to the raw disk, and how long an async save blocks a step.

    python benchmarks/bench_checkpoint.py [--gb 1.0] [--dir /tmp]

Everything is measured in one run on one disk: save and restore of ~GB of float32 state
sharded over 8 CPU devices on a (pod=2, data=2, model=2) mesh, a raw sequential write
(fsync'd) and read of the same number of bytes; then the platform's own train step (a
PaLM-shaped model on the same mesh, Adafactor, donated state) with an async save of *its*
train state started between steps, so the blocking time is compared with that step's own
time. Before every read the files are evicted from the page cache (posix_fadvise DONTNEED
after fsync), so reads come from the disk for both.

Then the local job itself (jobs/local-cpu.yaml's model, sequence length, batch and checkpoint
cadence, its two pods on the same 8 devices in this process, `--job-steps` steps): how long
each checkpoint save blocks the loop, as a fraction of the mean step time; and the same
job with the RAM tier (`checkpoint.local`, every `--local-tier-every` steps), how long each
RAM save blocks it (`--only-local-tier` measures that alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from etils import epath  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from palm_platform.checkpoint import CheckpointConfig, Checkpointer  # noqa: E402
from palm_platform.checkpoint.manifest import walk_files, write_manifest  # noqa: E402
from palm_platform.mesh import make_mesh  # noqa: E402
from palm_platform.train.optimizer import build_optimizer

BLOCK = 64 << 20


def evict(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_write_read(path: Path, nbytes: int) -> tuple[float, float]:
    block = os.urandom(BLOCK)
    start = time.perf_counter()
    with open(path, "wb") as f:
        for offset in range(0, nbytes, BLOCK):
            f.write(block[: min(BLOCK, nbytes - offset)])
        f.flush()
        os.fsync(f.fileno())
    write_s = time.perf_counter() - start
    evict([path])
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(BLOCK):
            pass
    read_s = time.perf_counter() - start
    path.unlink()
    return write_s, read_s


def make_state(mesh, nbytes: int) -> dict:
    """Four float32 matrices, fully sharded over the mesh, random (not compressible)."""
    side = int((nbytes / 4 / 4) ** 0.5) // 64 * 64
    sharding = NamedSharding(mesh, P(("pod", "data"), "model"))
    make = jax.jit(
        lambda k: jax.random.normal(k, (side, side), jnp.float32), out_shardings=sharding
    )
    keys = jax.random.split(jax.random.key(0), 4)
    state = {f"w{i}": make(keys[i]) for i in range(4)}
    jax.block_until_ready(state)
    return state


def state_bytes(state) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(state))


def local_job_blocking(work: Path, steps: int) -> None:
    """How long the loop's checkpoint saves block it, against the mean step time."""
    import yaml

    from palm_platform.job import load_job
    from palm_platform.metrics.sink import read_records
    from palm_platform.train.loop import Trainer

    job_file = Path(__file__).resolve().parents[1] / "jobs" / "local-cpu.yaml"
    spec = yaml.safe_load(job_file.read_text())
    spec["name"] = "ckpt-bench"
    spec["topology"].update(pods=2, hosts_per_pod=1, chips_per_host=4, ici_topology="2x2x1")
    spec["train"].update(steps=steps, batch_schedule=[{"sequences": 16}])
    spec["checkpoint"].update(directory=str(work / "job-ckpt"))  # the local job's cadence
    spec["faults"]["inject"] = []
    spec["metrics"]["wandb_mode"] = "disabled"
    spec["run_dir"] = str(work / "job-run")
    (work / "job.yaml").write_text(yaml.safe_dump(spec))
    job = load_job(work / "job.yaml")
    trainer = Trainer(job, Path(job.run_dir) / job.name)
    blocked: list[float] = []
    persistent = trainer.setup.checkpoints.persistent
    save = persistent.save

    def timed_save(step, *args, **kwargs):  # the whole call the loop waits for
        begin = time.perf_counter()
        save(step, *args, **kwargs)
        if step > 0:
            blocked.append(time.perf_counter() - begin)

    persistent.save = timed_save
    try:
        trainer.run()
    finally:
        trainer.close()
    records = read_records(Path(job.run_dir) / job.name)
    # Mean, not median: the loop reads step k a step late, so single gaps shift between steps.
    step_s = statistics.mean(r["step_s"] for r in records
                             if r["kind"] == "step" and not r["compiled"])
    print(f"local job ({steps} steps, palm-tiny, batch 16 x {job.seq_len}, 2 pods on 8 devices, "
          f"checkpoint every {job.checkpoint.every_steps}): mean step {step_s * 1e3:.0f} ms; "
          f"{len(blocked)} saves blocked the loop for "
          f"{', '.join(f'{b * 1e3:.0f}' for b in blocked)} ms")
    print(f"local job: checkpoint blocking as a fraction of one step: "
          f"{statistics.median(blocked) / step_s:.3f} (median save)")


def local_tier_blocking(work: Path, steps: int, every: int) -> None:
    """The RAM tier in the local job: how long each save blocks the loop (the on-device copy;
    the host copy and the write run on a thread), against the mean step time. The persistent
    tier saves only at step 0 and the last step here, so it does not crowd the steps."""
    import yaml

    from palm_platform.job import load_job
    from palm_platform.metrics.sink import read_records
    from palm_platform.train.loop import Trainer

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs" / "local-cpu.yaml"
                           ).read_text())
    spec["name"] = "ram-tier-bench"
    spec["topology"].update(pods=2, hosts_per_pod=1, chips_per_host=4, ici_topology="2x2x1")
    spec["train"].update(steps=steps, batch_schedule=[{"sequences": 16}])
    spec["checkpoint"].update(directory=str(work / "ram-ckpt"), every_steps=10_000,
                              local={"directory": str(work / "ram"), "every_steps": every})
    spec["faults"]["inject"] = []
    spec["metrics"]["wandb_mode"] = "disabled"
    spec["run_dir"] = str(work / "ram-run")
    (work / "ram-job.yaml").write_text(yaml.safe_dump(spec))
    job = load_job(work / "ram-job.yaml")
    trainer = Trainer(job, Path(job.run_dir) / job.name)
    try:
        trainer.run()
    finally:
        trainer.close()
    records = read_records(Path(job.run_dir) / job.name)
    step_s = statistics.mean(r["step_s"] for r in records
                             if r["kind"] == "step" and not r["compiled"])
    blocked = [r["blocked_s"] for r in records
               if r["kind"] == "checkpoint_saved" and r.get("tier") == "local"]
    # what one save writes (one process: the whole state); the finished run's RAM is gone
    state = sum(leaf.size * leaf.dtype.itemsize
                for leaf in jax.tree.leaves(trainer.setup.program.abstract_state))
    print(f"RAM tier ({steps} steps, palm-tiny, batch 16, 2 pods on 8 devices, every {every}): "
          f"mean step {step_s * 1e3:.0f} ms; {len(blocked)} saves of {state / 1e6:.1f} MB "
          f"blocked the loop for {', '.join(f'{b * 1e3:.1f}' for b in blocked)} ms")
    print(f"RAM tier: save blocking as a fraction of one step: "
          f"{statistics.median(blocked) / step_s:.4f} median, {max(blocked) / step_s:.4f} max "
          f"(goal: at most 0.02)")


def build_train_step(mesh, d_model: int, seq: int):
    """(jitted step, train state, tokens [8, seq + 1]) of a PaLM-shaped model on `mesh`."""
    from palm.config import ModelConfig
    from palm_platform.job.train import OptimizerConfig
    from palm_platform.train.optimizer import learning_rate_schedule
    from palm_platform.train.state import init_train_state, state_shardings
    from palm_platform.train.step import StepSpec, make_train_step

    model = ModelConfig(d_model=d_model, num_layers=4, num_heads=d_model // 64, head_dim=64,
                        vocab_size=8192, max_seq_len=seq, compute_dtype="float32", remat="none")
    opt = OptimizerConfig()
    tx = build_optimizer(opt)[0]
    state = init_train_state(model, tx, mesh, seed=0)
    step = make_train_step(StepSpec(model, mesh.shape["pod"]), tx, mesh,
                           state_shardings(model, tx, mesh)[1], learning_rate_schedule(opt))
    tokens = jax.random.randint(jax.random.key(1), (8, seq + 1), 0, model.vocab_size)
    return step, state, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="state size in GB (1e9 bytes)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="folder on the disk to test")
    parser.add_argument("--d-model", type=int, default=512, help="the train step's model width")
    parser.add_argument("--seq", type=int, default=256, help="the train step's sequence length")
    parser.add_argument("--job-steps", type=int, default=50, help="local job steps (0: skip)")
    parser.add_argument("--local-tier-steps", type=int, default=40,
                        help="steps of the local job with the RAM tier (0: skip)")
    parser.add_argument("--local-tier-every", type=int, default=4, help="RAM-tier cadence")
    parser.add_argument("--only-local-tier", action="store_true",
                        help="measure the RAM tier's blocking only")
    args = parser.parse_args()
    if args.only_local_tier:
        with tempfile.TemporaryDirectory(dir=args.dir) as work:
            local_tier_blocking(Path(work), args.local_tier_steps, args.local_tier_every)
        return 0

    mesh = make_mesh(2, 2, 2)  # the platform's mesh (Auto axes, as the train step needs)
    state = make_state(mesh, int(args.gb * 1e9))
    nbytes = state_bytes(state)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    print(
        f"state: {nbytes / 1e9:.3f} GB float32 on {len(jax.devices())} CPU devices, "
        f"mesh {dict(mesh.shape)}; disk: {args.dir}"
    )

    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        work = Path(work)
        raw_w, raw_r = raw_write_read(work / "raw.bin", nbytes)
        print(f"raw sequential write+fsync: {nbytes / raw_w / 1e9:6.2f} GB/s ({raw_w:.2f} s)")
        print(f"raw sequential read:        {nbytes / raw_r / 1e9:6.2f} GB/s ({raw_r:.2f} s)")

        config = CheckpointConfig(
            directory=str(work / "ckpt"), every_steps=1, manifest_checksums=False
        )
        checkpointer = Checkpointer(config, directory=work / "ckpt")
        start = time.perf_counter()
        checkpointer.save(1, state, {"next_index": 1}, {})
        blocked = time.perf_counter() - start
        checkpointer.wait_until_finished()
        save_s = time.perf_counter() - start
        step_dir = epath.Path(work / "ckpt" / "1")
        on_disk = sum(p.stat().length for p in walk_files(step_dir))
        start = time.perf_counter()
        write_manifest(step_dir, checksums=True)
        crc_s = time.perf_counter() - start
        print(
            f"orbax save (to commit):     {nbytes / save_s / 1e9:6.2f} GB/s ({save_s:.2f} s, "
            f"{on_disk / 1e9:.3f} GB on disk), ratio to raw write {raw_w / save_s:.2f}"
        )
        print(f"  caller blocked by save:   {blocked:.3f} s ({blocked / save_s:.1%} of the save)")
        print(
            f"  CRC32 manifest (process 0, background): {crc_s:.2f} s "
            f"({on_disk / crc_s / 1e9:.2f} GB/s)"
        )

        evict([p for p in walk_files(step_dir)])
        start = time.perf_counter()
        restored = checkpointer.restore(abstract)
        jax.block_until_ready(restored.train_state)
        restore_s = time.perf_counter() - start
        print(
            f"orbax restore (verified):   {nbytes / restore_s / 1e9:6.2f} GB/s "
            f"({restore_s:.2f} s), ratio to raw read {raw_r / restore_s:.2f}"
        )
        del restored

        # The platform's train step, and a save of the state it trains (what the loop does).
        step, train_state, tokens = build_train_step(mesh, args.d_model, args.seq)
        train_bytes = state_bytes(train_state)

        def timed_step() -> float:
            nonlocal train_state
            begin = time.perf_counter()
            train_state, _ = jax.block_until_ready(step(train_state, tokens))
            return time.perf_counter() - begin

        timed_step()  # compile
        baseline = statistics.median(timed_step() for _ in range(5))
        # The first save of a new state structure blocks far longer (Orbax prepares per-array
        # transfers); the loop saves the same structure every time, so that is measured next.
        start = time.perf_counter()
        checkpointer.save(2, train_state, {"next_index": 2}, {})
        first_blocked = time.perf_counter() - start
        checkpointer.wait_until_finished()
        timed_step()
        start = time.perf_counter()
        checkpointer.save(3, train_state, {"next_index": 3}, {})
        blocked = time.perf_counter() - start
        during = []
        committed = work / "ckpt" / "3" / "commit_success.txt"
        while not committed.exists() and len(during) < 200:
            during.append(timed_step())
        write_with_steps_s = time.perf_counter() - start
        checkpointer.wait_until_finished()
        checkpointer.close()
        slowed = statistics.mean(during) if during else float("nan")
        print(f"train step (d_model {args.d_model}, batch 8 x seq {args.seq}, train state "
              f"{train_bytes / 1e9:.3f} GB): {baseline * 1e3:.0f} ms median")
        print(f"first save of the train state blocked the caller {first_blocked * 1e3:.0f} ms = "
              f"{first_blocked / baseline:.2f} steps")
        print(
            f"async save blocks the caller {blocked * 1e3:.0f} ms = {blocked / baseline:.2f} "
            f"steps; {len(during)} steps ran during the write at {slowed * 1e3:.0f} ms mean "
            f"({slowed / baseline:.2f}x: the write shares the CPU cores)"
        )
        print(f"  the write took {write_with_steps_s:.2f} s next to the steps")
        print(f"async save blocking as a fraction of one step: {blocked / baseline:.3f}")
        if args.job_steps:
            local_job_blocking(work, args.job_steps)
        if args.local_tier_steps:
            local_tier_blocking(work, args.local_tier_steps, args.local_tier_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
