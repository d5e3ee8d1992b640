"""atomic_write: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import pytest

from palm_platform.atomic_write import atomic_open, write_atomic


def test_write_replaces_the_file_and_leaves_no_temporary_behind(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    write_atomic(path, '{"new": 1}')
    assert path.read_text() == '{"new": 1}'
    write_atomic(path, b"\x00bytes", durable=True)
    assert path.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_writer_that_fails_midway_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("old contents")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(path, "w") as f:
            f.write("half of the new")
            assert path.read_text() == "old contents"  # not visible before the rename
            raise RuntimeError("disk full")
    assert path.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_the_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, palm_platform.atomic_write; "
            "print(sorted(m for m in ('jax', 'ray', 'numpy', 'grain') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
