"""Checkpoints on gs:// against a local GCS emulator: the path the pod jobs take.

GCS has no atomic rename, so Orbax writes step N in place and commits it with
`N/commit_success.txt`; these tests check that everything the platform does with a
checkpoint directory (save, restore onto another mesh, retention, the manifest, `palm ckpt`,
an interrupted save) holds there as on a local disk.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import fsspec
import jax
import pytest

from palm_platform.checkpoint import CheckpointConfig, Checkpointer, list_checkpoints, verify
from palm_platform.cli import main as palm
from tests.support import checkpoint_worker as worker
from tests.support.paths import SUPPORT

WORKER = SUPPORT / "checkpoint_worker.py"


def _checkpointer(directory: str, **overrides) -> Checkpointer:
    config = CheckpointConfig(directory=directory, **({"every_steps": 10} | overrides))
    return Checkpointer(config, directory=directory)


def _objects(directory: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(directory)
    return sorted(p.removeprefix(root.rstrip("/") + "/") for p in fs.find(root))


def test_save_and_restore_on_gs_commit_with_a_marker_and_a_manifest(gcs_bucket):
    directory = f"{gcs_bucket}/save-restore"
    checkpointer = _checkpointer(directory)
    mesh = jax.make_mesh(*worker.SAVE_MESH)
    for step in (10, 20):
        checkpointer.save(
            step, worker.sharded_state(mesh, 2), {"next_index": step}, {"skipped": []}
        )
    restored = checkpointer.restore(worker.abstract_state(jax.make_mesh(*worker.SAVE_MESH)))
    checkpointer.close()
    assert (restored.step, restored.data_state) == (20, {"next_index": 20})
    worker.check_restored(restored.train_state)
    objects = _objects(directory)
    assert {"10/commit_success.txt", "20/commit_success.txt", "20/palm_manifest.json"} <= set(
        objects
    )
    assert not [o for o in objects if "tmp" in o], objects  # nothing left under a temporary name


def test_restore_from_gs_onto_another_mesh_reshards(gcs_bucket):
    directory = f"{gcs_bucket}/reshard"
    checkpointer = _checkpointer(directory)
    checkpointer.save(10, worker.sharded_state(jax.make_mesh(*worker.SAVE_MESH), 2), {}, {})
    restored = checkpointer.restore(worker.abstract_state(jax.make_mesh(*worker.RESTORE_MESH)))
    checkpointer.close()
    kernel = restored.train_state["opt"]["mu_kernel"]
    assert kernel.sharding.mesh.axis_names == ("data", "model")
    worker.check_restored(restored.train_state)


def test_retention_deletes_old_steps_on_gs(gcs_bucket):
    directory = f"{gcs_bucket}/retention"
    checkpointer = _checkpointer(directory, every_steps=1, keep_last=2, rollback_steps=0)
    state = worker.sharded_state(jax.make_mesh(*worker.SAVE_MESH), 2)
    for step in range(1, 6):
        checkpointer.save(step, state, {"next_index": step}, {})
    checkpointer.close()
    assert [i.step for i in list_checkpoints(directory)] == [4, 5]
    assert {o.split("/")[0] for o in _objects(directory)} == {"4", "5"}  # every object deleted


def test_ckpt_list_and_verify_on_gs_name_a_damaged_object(gcs_bucket, capsys):
    directory = f"{gcs_bucket}/verify"
    checkpointer = _checkpointer(directory)
    checkpointer.save(10, worker.sharded_state(jax.make_mesh(*worker.SAVE_MESH), 2), {}, {})
    checkpointer.close()
    assert palm(["ckpt", "list", directory]) == 0
    listing = capsys.readouterr().out
    assert "10" in listing and "complete" in listing and "no manifest" not in listing
    assert palm(["ckpt", "verify", directory]) == 0
    assert "step 10: ok (manifest: sizes and CRC32s)" in capsys.readouterr().out

    fs, _ = fsspec.core.url_to_fs(directory)
    chunk = max((p for p in fs.find(f"{directory}/10/state") if "/d/" in p), key=fs.size)
    fs.pipe_file(chunk, fs.cat_file(chunk)[:-100])  # a truncated data object
    assert palm(["ckpt", "verify", directory]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and chunk.rsplit("/", 1)[1] in out
    assert palm(["ckpt", "list", f"{gcs_bucket}/nothing-here"]) == 2


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
def test_save_killed_before_its_commit_on_gs_is_never_restored(gcs_bucket):
    directory = f"{gcs_bucket}/killed"
    proc = subprocess.Popen([sys.executable, str(WORKER), "hang-before-commit", directory],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # step 2's shards are written, its commit file is not
            if "HANGING_BEFORE_COMMIT" in line:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    infos = list_checkpoints(directory)
    assert [(i.step, i.complete) for i in infos] == [(1, True), (2, False)]
    assert any(o.startswith("2/state/") for o in _objects(directory)), "no shard was written"
    assert verify(directory).ok  # an interrupted save is not a checkpoint, so not damage

    checkpointer = Checkpointer(CheckpointConfig(directory=directory, every_steps=1),
                                directory=directory)
    restored = checkpointer.restore(worker.abstract_state(jax.make_mesh(*worker.RESTORE_MESH)))
    assert (restored.step, restored.data_state) == (1, {"next_index": 8})
    worker.check_restored(restored.train_state)
    # the next save of step 2 replaces the half-written one and commits
    state = worker.sharded_state(jax.make_mesh(*worker.SAVE_MESH), 2)
    checkpointer.save(2, state, {"next_index": 16}, {})
    checkpointer.close()
    assert [(i.step, i.complete) for i in list_checkpoints(directory)] == [(1, True), (2, True)]
    assert verify(directory).ok
