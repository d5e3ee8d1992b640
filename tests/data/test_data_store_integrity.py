"""The token store stands on its own: damage is found cheaply (or completely with --deep),
prepare rewrites only a damaged shard, training and sampling need only the store, and gc
removes the shards no manifest lists.

Each damage case is done to a real shard file of a store prepared here (in this process).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from palm_platform.cli import main as palm
from palm_platform.data import prepare, store
from palm_platform.data.config import DataConfig, SourceConfig
from palm_platform.data.pipeline import build_pipeline
from tests.support.paths import ROOT

REPO = ROOT


def _lines(n: int, tag: str = "") -> str:
    return "\n".join(json.dumps({"text": f"{tag}document {i}: " + "words and more words " *
                                 (i % 13 + 1)}) for i in range(n)) + "\n"


def _config() -> DataConfig:
    return DataConfig(sources=[SourceConfig(name="a", paths=["a.jsonl", "b.jsonl"], weight=1)],
                      store="store", prepare={"unit_mb": 0.004})


@pytest.fixture
def prepared(tmp_path):
    """A complete store of a few shards, with its inputs and its digest (a shard is named
    by its input files' paths and fingerprints, so each test prepares its own)."""
    folder = tmp_path
    (folder / "a.jsonl").write_text(_lines(60))
    (folder / "b.jsonl").write_text(_lines(20, "b "))
    result = prepare.prepare_store(_config(), folder, in_process=True, progress=False)
    assert result.shards >= 3
    shutil.copytree(folder / "store", folder / "saved-store")
    return folder, result


def _copy(prepared, tmp_path: Path) -> tuple[Path, Path]:
    """The prepared store (a fresh one: `restore` puts a saved copy back) and its second
    shard."""
    folder, _ = prepared
    if not (folder / "store").exists():
        shutil.copytree(folder / "saved-store", folder / "store")
    manifest = store.read_manifest(str(tmp_path / "store"))
    second = manifest.shards("a")[1].name
    return tmp_path / "store", tmp_path / "store" / "a" / second


def _data_file(shard: Path, array: str) -> Path:
    (path,) = [p for p in (shard / array).rglob("*") if p.is_file() and p.name != "zarr.json"]
    return path


def _info(store_dir: Path, capsys, *flags: str) -> tuple[int, str, str]:
    code = palm(["data", "info", str(store_dir), *flags])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _one_line(err: str, *needles: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("array", ["tokens", "ends"])
def test_a_truncated_data_file_is_found_by_info_without_reading_data(prepared, tmp_path,
                                                                     capsys, array):
    store_dir, shard = _copy(prepared, tmp_path)
    data = _data_file(shard, array)
    data.write_bytes(data.read_bytes()[:100])
    code, _, err = _info(store_dir, capsys)
    assert code == 2
    _one_line(err, shard.name, "damaged shard", f"{array}/", "torn",
              "`palm data prepare JOB.yaml` rewrites that shard only")


def test_a_missing_file_and_a_deleted_sidecar_are_found(prepared, tmp_path, capsys):
    store_dir, shard = _copy(prepared, tmp_path)
    (shard / "tokens" / "zarr.json").unlink()
    code, _, err = _info(store_dir, capsys)
    assert code == 2
    _one_line(err, shard.name, "tokens/zarr.json missing")
    shutil.rmtree(store_dir)
    store_dir, shard = _copy(prepared, tmp_path)
    shard.with_suffix(".json").unlink()
    code, _, err = _info(store_dir, capsys)
    assert code == 2
    _one_line(err, shard.name, "shard missing (no sidecar)", "palm data prepare")


def test_a_flipped_byte_passes_the_cheap_check_and_fails_deep(prepared, tmp_path, capsys):
    store_dir, shard = _copy(prepared, tmp_path)
    data = _data_file(shard, "tokens")
    raw = bytearray(data.read_bytes())
    raw[40] ^= 0xFF  # a token's byte, the same size: the listing cannot see it
    data.write_bytes(bytes(raw))
    code, out, _ = _info(store_dir, capsys)
    assert code == 0 and "complete" in out
    code, _, err = _info(store_dir, capsys, "--deep")
    assert code == 2  # each inner chunk's crc32c fails the read (older stores: the sha256)
    _one_line(err, shard.name, "unreadable (DATA_LOSS", "Digest mismatch",
              f"delete {shard}.json")
    tokens = store.TokenStore.open(str(store_dir)).source("a")
    with pytest.raises(store.ShardDamaged, match="Digest mismatch"):  # and so does a run
        tokens[int(tokens._offsets[1]):int(tokens._offsets[1]) + 10]


def test_deep_compares_the_sha256_of_what_it_reads(prepared, tmp_path, capsys):
    store_dir, shard = _copy(prepared, tmp_path)
    sidecar = json.loads(shard.with_suffix(".json").read_text())
    sidecar["tokens_sha256"] = "0" * 64  # the tokens read no longer match what was written
    shard.with_suffix(".json").write_text(json.dumps(sidecar))
    code, _, err = _info(store_dir, capsys, "--deep")
    assert code == 2
    _one_line(err, shard.name, "its tokens' sha256 differs from its sidecar's")


def test_deep_reads_every_shard_of_a_whole_store(prepared, tmp_path, capsys):
    store_dir, _ = _copy(prepared, tmp_path)
    code, out, err = _info(store_dir, capsys, "--deep")
    assert code == 0 and err == ""
    assert "every shard's tokens read and matching its sha256" in out
    assert prepared[1].digest in out


def test_deep_on_a_store_still_being_prepared_and_no_manifest_are_one_line(prepared, tmp_path,
                                                                           capsys):
    store_dir, _ = _copy(prepared, tmp_path)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    (store_dir / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    code, _, err = _info(store_dir, capsys, "--deep")
    assert code == 2
    _one_line(err, "still being prepared", "--deep checks a complete store")
    (store_dir / "manifest.json").unlink()
    code, _, err = _info(store_dir, capsys)
    assert code == 2
    _one_line(err, "no token store here", "palm data prepare")


def test_prepare_rewrites_only_the_damaged_shard_and_the_digest_is_unchanged(prepared, tmp_path):
    store_dir, shard = _copy(prepared, tmp_path)
    data = _data_file(shard, "tokens")
    data.write_bytes(data.read_bytes()[:1000])
    others = {p: p.stat().st_mtime_ns for p in store_dir.rglob("*") if p.is_file()
              and shard.name not in str(p) and p.name != "manifest.json"}
    result = prepare.prepare_store(_config(), tmp_path, in_process=True, progress=False)
    assert (result.written, result.skipped) == (1, prepared[1].shards - 1)
    assert result.digest == prepared[1].digest
    assert {p: p.stat().st_mtime_ns for p in others} == others  # the rest untouched
    assert store.TokenStore.open(str(store_dir)).check(deep=True) is None


def test_a_read_of_a_damaged_shard_names_it_instead_of_data_loss(prepared, tmp_path):
    store_dir, shard = _copy(prepared, tmp_path)
    data = _data_file(shard, "tokens")
    data.write_bytes(data.read_bytes()[:100])  # its index (at the end) is gone
    tokens = store.TokenStore.open(str(store_dir)).source("a")
    offsets = tokens._offsets
    with pytest.raises(store.ShardDamaged) as error:
        tokens[int(offsets[1]):int(offsets[1]) + 10]
    assert shard.name in str(error.value) and "DATA_LOSS" in str(error.value)
    assert f"delete {shard}.json" in str(error.value)


def _job(folder: Path) -> Path:
    job = yaml.safe_load((REPO / "jobs" / "local-cpu.yaml").read_text())
    job.update(data=_config().model_dump(mode="json", exclude_defaults=True),
               run_dir=str(folder / "runs"))
    job["checkpoint"]["directory"] = str(folder / "ckpt")
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_with_the_raw_inputs_gone_a_complete_store_trains_and_samples(prepared, tmp_path,
                                                                      capsys, monkeypatch):
    from palm_platform.job import load_job
    from palm_platform.ray.prepare_first import prepare_if_needed

    store_dir, _ = _copy(prepared, tmp_path)
    job_file = _job(tmp_path)
    before = build_pipeline(_config(), seq_len=32, base_dir=tmp_path, process_index=0,
                            process_count=2).local_batch(8)
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).unlink()
    # the driver's check: one line, and the store is used as it is
    assert prepare_if_needed(load_job(str(job_file)), str(job_file), tmp_path, address=None,
                             on_cluster=False) == 0
    err = capsys.readouterr().err.strip()
    _one_line(err, "could not re-check the inputs", "a.jsonl", "using the store")
    # a training process: the manifest alone
    after = build_pipeline(_config(), seq_len=32, base_dir=tmp_path, process_index=0,
                           process_count=2).local_batch(8)
    np.testing.assert_array_equal(after, before)
    monkeypatch.chdir(tmp_path)
    assert palm(["data", "sample", str(job_file), "--step", "2", "--rows", "1"]) == 0
    out, err = capsys.readouterr()
    assert "--- row 0" in out and "could not re-check the inputs" in err


def test_gc_removes_only_the_shards_no_manifest_lists(prepared, tmp_path, capsys):
    store_dir, _ = _copy(prepared, tmp_path)
    before = {p.name for p in (store_dir / "a").glob("*.json")}
    with open(tmp_path / "b.jsonl", "a") as f:  # an edited input: its shard is renamed
        f.write(_lines(3, "new "))
    os.utime(tmp_path / "b.jsonl", (1, 1))
    result = prepare.prepare_store(_config(), tmp_path, in_process=True, progress=False)
    assert result.written >= 1
    assert palm(["data", "gc", str(store_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {result.written} shard(s)" in out
    assert len({p.name for p in (store_dir / "a").glob("*.json")}) == len(before) + \
        result.written  # nothing removed by a dry run
    assert palm(["data", "gc", str(store_dir)]) == 0
    assert f"removed {result.written} shard(s)" in capsys.readouterr().out
    assert palm(["data", "info", str(store_dir), "--deep"]) == 0
    assert result.digest in capsys.readouterr().out
    listed = {e.name for e in store.read_manifest(str(store_dir)).shards("a")}
    on_disk = {p.name for p in (store_dir / "a").iterdir()}
    assert on_disk == listed | {f"{n}.json" for n in listed}


def test_gc_never_touches_a_store_being_prepared(prepared, tmp_path, capsys):
    store_dir, _ = _copy(prepared, tmp_path)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    (store_dir / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    assert palm(["data", "gc", str(store_dir)]) == 2
    _one_line(capsys.readouterr().err, "still being prepared", "never removes a shard")


def test_palm_run_rewrites_a_torn_shard_before_training(prepared, tmp_path, capsys):
    from palm_platform.job import load_job
    from palm_platform.ray.prepare_first import prepare_if_needed

    store_dir, shard = _copy(prepared, tmp_path)
    data = _data_file(shard, "ends")
    data.write_bytes(data.read_bytes()[:50])
    job_file = _job(tmp_path)
    assert prepare_if_needed(load_job(str(job_file)), str(job_file), tmp_path, address=None,
                             on_cluster=False) == 0
    err = capsys.readouterr().err
    assert f"token store damaged ({shard}: damaged shard: file" in err
    assert "1 written" in err and "Traceback" not in err
    assert store.TokenStore.open(str(store_dir)).check(deep=True) is None
