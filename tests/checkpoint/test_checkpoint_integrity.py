"""Integrity: interrupted saves are never restored; damaged files are found and skipped."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palm_platform.checkpoint import CheckpointConfig, Checkpointer, list_checkpoints, verify
from palm_platform.cli import main as palm
from tests.support.paths import SUPPORT

WORKER = SUPPORT / "checkpoint_worker.py"
ABSTRACT = {"w": jax.ShapeDtypeStruct((256, 64), jnp.float32)}


def _save_steps(directory: Path, steps=(10, 20)) -> None:
    checkpointer = Checkpointer(
        CheckpointConfig(directory=str(directory), every_steps=10), directory=directory
    )
    rng = np.random.default_rng(0)
    for step in steps:
        w = jnp.asarray(rng.standard_normal((256, 64), dtype=np.float32))
        checkpointer.save(step, {"w": w}, {"at": step}, {})
    checkpointer.close()


def _largest_data_file(step_dir: Path) -> Path:
    return max((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)


def _restore(directory: Path):
    checkpointer = Checkpointer(CheckpointConfig(directory=str(directory)), directory=directory)
    try:
        return checkpointer.restore(ABSTRACT)
    finally:
        checkpointer.close()


def test_truncated_chunk_file_is_named_by_verify_and_restore_uses_the_previous_step(
    tmp_path, caplog
):
    _save_steps(tmp_path)
    chunk = _largest_data_file(tmp_path / "20")
    os.truncate(chunk, chunk.stat().st_size // 2)

    report = verify(tmp_path)
    assert not report.ok
    assert [d.path for d in report.damaged] == [str(chunk)]
    assert "manifest says" in report.damaged[0].problem

    with caplog.at_level(logging.ERROR, logger="palm_platform.checkpoint"):
        restored = _restore(tmp_path)
    assert (restored.step, restored.data_state) == (10, {"at": 10})
    assert str(chunk) in caplog.text


def test_deleted_chunk_file_is_reported_missing(tmp_path):
    _save_steps(tmp_path, steps=(10,))
    chunk = _largest_data_file(tmp_path / "10")
    chunk.unlink()
    assert [(d.path, d.problem) for d in verify(tmp_path, 10).damaged] == [(str(chunk), "missing")]


def test_same_size_corruption_is_caught_by_checksums_not_by_sizes(tmp_path):
    _save_steps(tmp_path, steps=(10,))
    chunk = _largest_data_file(tmp_path / "10")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert verify(tmp_path, checksums=False).ok
    assert [d.problem for d in verify(tmp_path).damaged] == ["CRC32 differs from the manifest"]


def test_without_a_manifest_verify_reads_back_and_restore_falls_back_on_a_read_error(tmp_path):
    _save_steps(tmp_path)
    (tmp_path / "20" / "palm_manifest.json").unlink()  # writer died after Orbax's commit
    chunk = _largest_data_file(tmp_path / "20")
    os.truncate(chunk, chunk.stat().st_size // 2)

    report = verify(tmp_path, 20)
    assert report.steps[0].method == "read back (no manifest)"
    assert [d.path for d in report.damaged] == [str(tmp_path / "20" / "state")]
    assert _restore(tmp_path).step == 10


def test_cli_list_and_verify_report_and_exit_codes(tmp_path, capsys):
    _save_steps(tmp_path)
    assert palm(["ckpt", "list", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert [line.split()[0] for line in listing.splitlines()[1:]] == ["10", "20"]
    assert listing.count("complete") == 2

    assert palm(["ckpt", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")

    chunk = _largest_data_file(tmp_path / "20")
    os.truncate(chunk, 10)
    assert palm(["ckpt", "verify", str(tmp_path), "20"]) == 1
    assert f"damaged: {chunk}" in capsys.readouterr().out

    assert palm(["ckpt", "verify", str(tmp_path / "absent")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    assert palm(["ckpt", "verify", str(tmp_path), "30"]) == 2


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
def test_save_killed_before_its_commit_is_never_restored(tmp_path):
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "hang-before-commit", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:  # the shards of step 2 are written; the commit is pending
            if "HANGING_BEFORE_COMMIT" in line:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    infos = list_checkpoints(tmp_path)
    assert [(i.step, i.complete) for i in infos] == [(1, True), (2, False)]
    assert list(infos[1].path.glob("state*/ocdbt.process_0/d/*")), "no shard was written"
    assert verify(tmp_path).ok  # the interrupted save is not a checkpoint, so not damage

    from tests.support import checkpoint_worker as worker

    checkpointer = Checkpointer(CheckpointConfig(directory=str(tmp_path)), directory=tmp_path)
    restored = checkpointer.restore(worker.abstract_state(jax.make_mesh(*worker.RESTORE_MESH)))
    checkpointer.close()
    assert (restored.step, restored.data_state) == (1, {"next_index": 8})
    worker.check_restored(restored.train_state)
    assert [i.step for i in list_checkpoints(tmp_path)] == [1]  # the tmp dir is cleaned up


@pytest.mark.parametrize("text, problem", [
    ('{"format": 1, "files": {', "manifest unreadable: "),  # torn write
    ("[" * 100_000, "manifest unreadable: maximum recursion depth"),
    ('["not", "an", "object"]', "manifest unreadable: not a JSON object"),
    ('{"format": 1}', "manifest unreadable: no 'files' table"),
    ('{"files": {"../../../etc/hostname": {"size": 1}}}', "outside the step folder"),
    ('{"files": {"/etc/hostname": {"size": 1}}}', "outside the step folder"),
    ('{"files": {"state/x": {"size": "12"}}}', "has no integer size"),
])
def test_a_hostile_manifest_is_damage_and_restore_falls_back(tmp_path, text, problem):
    _save_steps(tmp_path)
    manifest = tmp_path / "20" / "palm_manifest.json"
    manifest.write_text(text)
    report = verify(tmp_path, 20)
    assert [d.path for d in report.damaged] == [str(manifest)]
    assert problem in report.damaged[0].problem and len(report.damaged[0].problem) < 300
    assert _restore(tmp_path).step == 10


def test_listing_a_save_in_flight_survives_files_that_vanish_while_it_is_listed(
    tmp_path, monkeypatch
):
    # Orbax deletes its lock files and renames the temporary folder while a save commits; a
    # `palm ckpt list` (or the loop's own listing) at that moment must not fail.
    from palm_platform.checkpoint import inventory

    step_dir = tmp_path / "10.orbax-checkpoint-tmp-123"
    step_dir.mkdir()
    (step_dir / "kept").write_bytes(b"x" * 7)
    listed = inventory.walk_files

    def listing_with_a_vanished_file(directory):
        return [*listed(directory), directory / "manifest.ocdbt.__lock"]

    monkeypatch.setattr(inventory, "walk_files", listing_with_a_vanished_file)
    [info] = list_checkpoints(tmp_path)
    assert (info.step, info.complete, info.size_bytes) == (10, False, 7)
