"""A damaged token store met in a run on Ray: the run stops with exit 2 and one line naming
the shard and the fix, instead of a traceback and restarts that read the same bytes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from palm_platform.data import prepare
from palm_platform.data.config import DataConfig
from tests.support.local_cluster import BIN, driver_env
from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multiprocess]


def _damage_every_shard_index(store: Path) -> None:
    """Flip a byte of each tokens file's shard index (its end): the same size, so the cheap
    check on the driver passes, and the first read fails its crc32c (DATA_LOSS)."""
    for data in store.glob("c/*/tokens/c/*"):
        raw = bytearray(data.read_bytes())
        raw[-10] ^= 0xFF
        data.write_bytes(bytes(raw))


def test_a_damaged_shard_stops_the_run_with_exit_2_and_the_fix(local_cluster, tmp_path):
    lines = [json.dumps({"text": f"document {i}: " + "words and more words " * (i % 13 + 1)})
             for i in range(400)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    spec = yaml.safe_load((ROOT / "tests" / "jobs" / "ray-2host.yaml").read_text())
    spec.update(run_dir=str(tmp_path / "run"), data={
        "store": "store", "sources": [{"name": "c", "paths": ["c.jsonl"], "weight": 1}],
        "prepare": {"unit_mb": 0.01}})
    spec["train"]["steps"] = 4
    spec["checkpoint"]["directory"] = str(tmp_path / "ckpt")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    prepare.prepare_store(DataConfig.model_validate(spec["data"]), tmp_path, in_process=True,
                          progress=False)
    _damage_every_shard_index(tmp_path / "store")
    run = subprocess.run([BIN / "palm", "run", str(job)], env=driver_env(local_cluster),
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ray-2host: stopped: ") and "damaged shard" in last, last
    assert "DATA_LOSS" in last and "Fix: delete" in last and "palm data prepare" in last
    assert json.loads((tmp_path / "run" / "ray-2host" / "data_error.json").read_text())
