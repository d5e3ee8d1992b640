"""`verify` checks CRC32s by default (a same-size corruption is found) and lists
incomplete checkpoints apart from the verified ones."""

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from palm_platform.checkpoint import CheckpointConfig, Checkpointer, verify


def _save(directory: Path, steps=(10, 20)) -> None:
    checkpointer = Checkpointer(CheckpointConfig(directory=str(directory), every_steps=10),
                                directory=directory)
    rng = np.random.default_rng(0)
    for step in steps:
        checkpointer.save(step, {"w": jnp.asarray(rng.standard_normal((64, 32), dtype=np.float32))},
                          {"at": step}, {})
    checkpointer.close()


def test_a_flipped_byte_of_the_same_size_is_found_by_default(tmp_path):
    _save(tmp_path)
    chunk = max(
        (tmp_path / "20" / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size
    )
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = verify(tmp_path)
    assert not report.ok and [d.path for d in report.damaged] == [str(chunk)]
    assert verify(tmp_path, checksums=False).ok  # sizes alone cannot see it


def test_an_incomplete_checkpoint_is_listed_apart(tmp_path):
    _save(tmp_path)
    shutil.copytree(tmp_path / "20", tmp_path / "30")
    for marker in (tmp_path / "30").rglob("commit_success*"):
        marker.unlink()
    (tmp_path / "30" / "_CHECKPOINT_METADATA").unlink(missing_ok=True)
    report = verify(tmp_path)
    assert [s.step for s in report.steps] == [10, 20]
    assert [i.step for i in report.incomplete] == [30]
