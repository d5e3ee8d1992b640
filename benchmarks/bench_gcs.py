"""What a checkpoint costs on gs:// (a local GCS emulator) against the local disk.

    python benchmarks/bench_gcs.py [--mb 32] [--steps 4] [--dir /tmp]

Measured in one run, per checkpoint, with the platform's own Checkpointer and tools on both
a local folder and gs:// on `palm gcs-emulator` (127.0.0.1, in memory): a synchronous save
(Orbax write + commit + the manifest with CRC32s), `palm ckpt list` (list_checkpoints),
`palm ckpt verify` (sizes and CRC32s against the manifest), and deleting one step, as
retention and rollbacks do (Orbax deletes every object of the step on GCS: there are no
directories). The state is ~MB of float32 sharded over 8 CPU devices.

The emulator is a single-threaded Python HTTP server on this machine: its figures show the
per-request cost of the gs:// path (listing and deleting object by object, no rename, a
manifest written in place) and how many requests each operation makes, not GCS
throughput, which only real GCS can show (infra/README.md lists those checks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from palm_platform.checkpoint import (  # noqa: E402
    CheckpointConfig,
    Checkpointer,
    list_checkpoints,
    verify,
)
from palm_platform.checkpoint.inventory import checkpoint_path  # noqa: E402
from palm_platform.checkpoint.manifest import walk_files  # noqa: E402
from palm_platform.storage.emulator import gcs_emulator  # noqa: E402


def _state(megabytes: float) -> dict:
    """A train-state-like tree: a few large kernels, some small leaves, one scalar."""
    mesh = jax.make_mesh((2, 2, 2), ("pod", "data", "model"))
    rows = max(8, int(megabytes * 2**20 / 4 / 4 / 1024) // 8 * 8)
    rng = np.random.default_rng(0)
    tree = {}
    for name in ("embed", "q", "kv", "mlp"):
        value = rng.standard_normal((rows, 1024), dtype=np.float32)
        sharding = NamedSharding(mesh, PartitionSpec(("pod", "data"), "model"))
        tree[name] = jax.device_put(value, sharding)
    for i in range(8):
        tree[f"norm_{i}"] = jax.device_put(
            np.ones(1024, np.float32), NamedSharding(mesh, PartitionSpec())
        )
    tree["step"] = jax.numpy.int32(0)
    return tree


def _measure(directory: str, state: dict, steps: int) -> dict[str, float]:
    config = CheckpointConfig(directory=directory, every_steps=1, keep_last=steps + 2,
                              rollback_steps=0, async_save=False)
    checkpointer = Checkpointer(config, directory=directory)
    times: dict[str, list[float]] = {"save": [], "list": [], "verify": [], "delete": []}
    checkpointer.save(0, state, {"next_index": 0}, {})  # warm-up: Orbax's first-save set-up
    for step in range(1, steps + 1):
        start = time.perf_counter()
        checkpointer.save(step, state, {"next_index": step}, {})
        times["save"].append(time.perf_counter() - start)
    times["objects"] = [len(walk_files(checkpoint_path(directory) / "1"))]
    for _ in range(steps):
        start = time.perf_counter()
        infos = list_checkpoints(directory)  # steps 0..steps
        times["list"].append((time.perf_counter() - start) / len(infos))
    for step in range(1, steps + 1):
        start = time.perf_counter()
        assert verify(directory, step).ok
        times["verify"].append(time.perf_counter() - start)
    for step in range(steps, 0, -1):  # newest first, as a rollback discards them
        start = time.perf_counter()
        checkpointer.discard_after(step - 1)
        times["delete"].append(time.perf_counter() - start)
    checkpointer.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=32, help="checkpoint size in MiB")
    parser.add_argument("--steps", type=int, default=4, help="checkpoints per medium")
    parser.add_argument("--dir", default=None, help="local folder for the disk side")
    args = parser.parse_args()
    state = _state(args.mb)
    size_mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
    with tempfile.TemporaryDirectory(dir=args.dir) as local:
        disk = _measure(os.path.join(local, "ckpt"), state, args.steps)
    with gcs_emulator("palm-bench") as emulator:
        os.environ.update(emulator.env)
        gcs = _measure("gs://palm-bench/ckpt", state, args.steps)
    print(f"checkpoint of {size_mb:.1f} MiB in {gcs['objects']:.0f} files/objects, "
          f"{args.steps} steps per medium, median per checkpoint")
    print(f"{'operation':<28}{'local disk':>12}{'gs:// emulator':>16}{'ratio':>9}")
    labels = {"save": "save (write+commit+manifest)", "list": "list (palm ckpt list)",
              "verify": "verify (sizes + CRC32s)", "delete": "delete one step"}
    for name, label in labels.items():
        ratio = gcs[name] / disk[name] if disk[name] > 0 else float("inf")
        print(f"{label:<28}{disk[name] * 1e3:>10.0f}ms{gcs[name] * 1e3:>14.0f}ms{ratio:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
