"""The RAM checkpoint tier: every host writes its own shards into host memory, every few steps.

    <root>/<host>/<step>/own.bin, own.json     this host's device blocks + their index
                        /neighbour.bin, .json  1-pod jobs: the previous host's blocks (ring)
                        /extras.json           data position and skips, ledger, spike state
                        /COMPLETE              written last, once every host committed

`<host>` is the host's stable identity (`pod-1-w0` from TPU_NAME / TPU_WORKER_ID, what the
fake hosts of the local cluster carry as well), never Ray's rank, which can move across a
restart; every block is named by its leaf path and global index, so a host that comes back
at another process index still finds the blocks its devices need (`peer_restore.py`).

A save blocks the step only for an on-device copy of the state (and, on 1-pod jobs, the
ring shift that brings the neighbour's blocks): one dispatch each. A background thread then
copies the blocks to host memory, writes them into a hidden folder, renames it to `<step>`
(this host's part committed), waits at a barrier for every host's rename, and writes
`COMPLETE`. A host killed in the middle of a save leaves no `COMPLETE` anywhere, so a torn
save is never restored (the bug MaxText #5260 has: an incomplete save cached as the latest).

Why not Orbax's emergency CheckpointManager (orbax-checkpoint 0.12.8, experimental), read
for this issue: with one replica on the replica axis (our 1-pod jobs) its constructor
drops the local directory (`elif self._slice_count == 1: del local_directory`), so 1-pod
jobs would get no RAM tier and no ring copy; it keys local data by JAX process index and
remaps devices by the ids it saved, while Ray Train may give a restarted host another rank;
it saves one state tree (no data iterator, ledger or spike state); and it restores through
its own broadcast, not from a ring neighbour. Blocks here are plain numpy bytes with a JSON
index per host: the RAM tier never crosses hosts on the save path and is read back into the
same mesh, so it needs neither TensorStore's chunking nor OCDBT's merge.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from palm_platform.atomic_write import write_atomic
from palm_platform.checkpoint import peer_transfer

# The persistent save's jitted on-device copy (one definition of it in the package).
from palm_platform.checkpoint.checkpointer import _device_copy
from palm_platform.checkpoint.config import LocalTierConfig

log = logging.getLogger(__name__)

OWN, NEIGHBOUR, EXTRAS, COMPLETE = "own", "neighbour", "extras.json", "COMPLETE"
KEEP_STEPS = 2  # the newest complete steps a host keeps (the one being written is a third)
BARRIER_TIMEOUT_MS = 300_000  # every host writes the same step: waits for the slowest write


def default_root(job_name: str) -> Path:
    """/dev/shm/palm/<job name>: RAM-backed on Linux (a temp folder where there is none)."""
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() else Path(tempfile.gettempdir())) / "palm" / job_name


def root_for(config: LocalTierConfig, job_name: str) -> Path:
    return Path(config.directory) if config.directory else default_root(job_name)


def host_identity() -> str:
    """`pod-1-w0` on a TPU host (the slice and worker id), else `process-<JAX index>`."""
    slice_name, worker = os.environ.get("TPU_NAME"), os.environ.get("TPU_WORKER_ID")
    name = f"{slice_name}-w{worker}" if slice_name and worker else f"process-{jax.process_index()}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def block_key(path: str, index: tuple, shape: tuple[int, ...]) -> str:
    """`<leaf path>|<start:stop,...>`: one block of one leaf, the same name on every host."""
    spans = [(s.start or 0, dim if s.stop is None else s.stop) for s, dim in zip(index, shape,
                                                                                   strict=True)]
    return path + "|" + ",".join(f"{a}:{b}" for a, b in spans)


class BlockLayout:
    """Which block of every leaf each device holds, from the abstract state's shardings."""

    def __init__(self, abstract_state: Any, mesh: jax.sharding.Mesh):
        self.mesh = mesh
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        self.leaves = [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]
        self._indices = [leaf.sharding.devices_indices_map(leaf.shape) for _, leaf in self.leaves]

    def key(self, leaf: int, device) -> str:
        path, abstract = self.leaves[leaf]
        return block_key(path, self._indices[leaf][device], abstract.shape)

    def keys_of_process(self, process: int) -> set[str]:
        devices = peer_transfer.devices_by_process(self.mesh).get(process, [])
        return {self.key(i, d) for i in range(len(self.leaves)) for d in devices}


def _commit(tmp: Path, final: Path) -> None:
    """This host's part of a step, committed by one rename (tests pause here to tear a save)."""
    os.replace(tmp, final)


def write_blocks(folder: Path, name: str, blocks: Iterable[tuple[str, np.ndarray]]) -> int:
    """`name.bin` (the blocks' bytes, back to back) and `name.json` (key, dtype, shape,
    offset); returns the bytes written."""
    entries, offset = [], 0
    with open(folder / f"{name}.bin", "wb") as out:
        for key, block in blocks:
            block = np.asarray(block, order="C")  # (ascontiguousarray makes 0-d 1-d)
            out.write(block.reshape(-1).view(np.uint8).data)
            entries.append({"key": key, "dtype": block.dtype.name, "shape": list(block.shape),
                            "offset": offset, "nbytes": block.nbytes})
            offset += block.nbytes
    (folder / f"{name}.json").write_text(json.dumps(entries))
    return offset


class BlockReader:
    """The blocks of one committed step of one host (own and neighbour copies), by key."""

    def __init__(self, step_dir: Path):
        self.step_dir = step_dir
        self.index: dict[str, tuple[str, dict]] = {}
        for name in (NEIGHBOUR, OWN):  # own last: preferred where both hold a block
            listing = step_dir / f"{name}.json"
            if listing.exists():
                for entry in json.loads(listing.read_text()):
                    self.index[entry["key"]] = (name, entry)
        self.bytes_read = 0
        self._read: dict[str, np.ndarray] = {}  # a block several devices need: read once

    def keys(self) -> set[str]:
        return set(self.index)

    def read(self, key: str) -> np.ndarray:
        if key in self._read:
            return self._read[key]
        name, entry = self.index[key]
        with open(self.step_dir / f"{name}.bin", "rb") as f:
            f.seek(entry["offset"])
            data = f.read(entry["nbytes"])
        self.bytes_read += len(data)
        block = np.frombuffer(data, dtype=jnp.dtype(entry["dtype"])).reshape(entry["shape"])
        self._read[key] = block
        return block

    def extras_text(self) -> str:
        return (self.step_dir / EXTRAS).read_text()


def _barrier(name: str) -> None:
    """Every JAX process at `name`, through the coordination service (gRPC, not the devices'
    communicator, so it may run on a thread beside the train step's collectives)."""
    if jax.process_count() == 1:
        return
    from palm_platform.compat.jax import coordination_client

    coordination_client().wait_at_barrier(name, BARRIER_TIMEOUT_MS)


class LocalTier:
    """Saves this host's shards (and its ring neighbour's, on 1-pod jobs) into host RAM."""

    def __init__(self, root: Path, abstract_state: Any, mesh: jax.sharding.Mesh, *,
                 pods: int, host: str | None = None, launch: float | None = None):
        """`launch`: the `palm run` this process belongs to (its start time, WorkerConfig's
        `launched_at`): steps another launch saved are removed, never restored. A restart
        within one launch (Ray Train's worker group again) reads them; a new `palm run` of the
        same job name (a fresh run folder, or another run's leftovers in /dev/shm) starts
        from its own checkpoint directory. None: no launch (one process), every step counts."""
        self.root = Path(root)
        self.launch = launch
        self.host = host or host_identity()
        self.folder = self.root / self.host
        self.layout = BlockLayout(abstract_state, mesh)
        self.mesh = mesh
        # 1-pod jobs have no replica in another pod: each host keeps its neighbour's blocks.
        self.ring = pods == 1 and jax.process_count() > 1
        self._ring_sources = peer_transfer.ring_sources(mesh) if self.ring else {}
        # Compiled now, not at the first save (which would wait for it); a restart loads
        # both from the compilation cache.
        self._copy = _device_copy.lower(abstract_state).compile()
        self._shift = (peer_transfer.compiled_ring_shift(abstract_state, mesh) if self.ring
                       else None)
        self._saver: threading.Thread | None = None
        self._error: BaseException | None = None
        self._saves = 0  # names the barriers: the same sequence on every host
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_unfinished()

    # -- saving -------------------------------------------------------------------------

    def save(self, step: int, train_state: Any, data_state: dict, ledger: dict) -> None:
        """Start saving `step`; returns after the on-device copies are dispatched."""
        self._join()
        snapshot = self._copy(train_state)
        shifted = self._shift(snapshot) if self._shift is not None else None
        self._saves += 1
        extras = {"step": step, "data_state": data_state, "ledger": ledger,
                  "hosts": jax.process_count(), "host": self.host, "launch": self.launch}
        self._saver = threading.Thread(
            target=self._write, args=(step, snapshot, shifted, extras, self._saves),
            name=f"palm-local-save-{step}", daemon=True)
        self._saver.start()

    def _blocks(self, tree: Any, source_of: Callable[[Any], Any]):
        seen = set()
        for leaf_index, leaf in enumerate(jax.tree.leaves(tree)):
            for shard in leaf.addressable_shards:
                key = self.layout.key(leaf_index, source_of(shard.device))
                if key not in seen:  # a block replicated over this host's devices: once
                    seen.add(key)
                    yield key, np.asarray(shard.data)

    def _write(self, step: int, snapshot: Any, shifted: Any, extras: dict, save: int) -> None:
        try:
            tmp = self.folder / f".tmp-{step}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write_blocks(tmp, OWN, self._blocks(snapshot, lambda d: d))
            del snapshot
            if shifted is not None:
                write_blocks(tmp, NEIGHBOUR, self._blocks(shifted, self._ring_sources.__getitem__))
            (tmp / EXTRAS).write_text(json.dumps(extras))
            final = self.folder / str(step)
            shutil.rmtree(final, ignore_errors=True)  # a step saved again after a rollback
            _commit(tmp, final)
            _barrier(f"palm_local_tier_{save}_{step}")
            write_atomic(final / COMPLETE, "")
            self._prune()
        except BaseException as error:  # noqa: BLE001 - re-raised by the next save or wait
            self._error = error

    def _join(self) -> None:
        if self._saver is not None:
            self._saver.join()
            self._saver = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"{self.folder}: a RAM-tier save failed: {error}") from error

    def wait_until_finished(self) -> None:
        self._join()

    # -- the folder ---------------------------------------------------------------------

    def complete_steps(self) -> list[int]:
        """Steps this host holds with `COMPLETE` (every host committed them), oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name) for p in self.folder.iterdir()
                      if p.name.isdigit() and (p / COMPLETE).exists())

    def reader(self, step: int) -> BlockReader:
        return BlockReader(self.folder / str(step))

    def _prune(self) -> None:
        for step in self.complete_steps()[:-KEEP_STEPS]:
            shutil.rmtree(self.folder / str(step), ignore_errors=True)

    def _remove_unfinished(self) -> None:
        """Hidden folders and steps without `COMPLETE`: saves a killed process left behind;
        and the steps of another launch."""
        for path in self.folder.iterdir():
            if path.name.startswith(".tmp-") or (path.name.isdigit() and (
                    not (path / COMPLETE).exists() or not self._this_launch(path))):
                shutil.rmtree(path, ignore_errors=True)

    def _this_launch(self, step_dir: Path) -> bool:
        if self.launch is None:
            return True
        try:
            return json.loads((step_dir / EXTRAS).read_text()).get("launch") == self.launch
        except (OSError, ValueError, AttributeError):  # unreadable: not a step of ours
            return False

    def discard_after(self, step: int) -> None:
        """Drop steps newer than `step` (after a rollback they hold the abandoned trajectory)."""
        self._join()
        for newer in (s for s in self.complete_steps() if s > step):
            shutil.rmtree(self.folder / str(newer), ignore_errors=True)

    def close(self) -> None:
        self._join()

    def release(self) -> None:
        """Give this host's RAM back: its folder goes, and the job's folder with the last
        host's (a finished or stopped launch's steps are never restored: `_this_launch`)."""
        self._join()
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.root.rmdir()  # only once empty: other hosts may still hold theirs
        except OSError:
            pass
