"""`palm data prepare` in this process: the store is the reference token cache, shard by shard.

The Ray path (workers, a worker killed mid-shard) is tests/data/test_data_prepare_ray.py; the
shard function and the plan are the same there.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from palm_platform.cli import main as palm
from palm_platform.data import prepare, store
from palm_platform.data.config import DataConfig, SourceConfig, resolve_path
from palm_platform.data.documents import LengthLimit
from palm_platform.data.prepare_shard import run_unit
from palm_platform.data.prepare_units import plan_source
from palm_platform.data.tokenizer import load_tokenizer, train_tokenizer
from tests.support import token_cache_reference as token_cache
from tests.support.paths import ROOT

REPO = ROOT
TOKENIZER = load_tokenizer("builtin:default")


def _documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "γάμμα", "δέλτα", "def f(x):", "\n    return", "42", "\t", "∑"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) for _ in range(n)]


def _jsonl_lines(texts: list[str], bad_every: int = 0) -> bytes:
    """JSONL with a bad record (bad JSON, missing field, empty text, bad UTF-8) every
    `bad_every` lines, so bad-record counting and locations are compared too."""
    lines = []
    for i, text in enumerate(texts, start=1):
        if bad_every and i % bad_every == 0:
            lines.append([b"{not json", b'{"body": "x"}', b'{"text": ""}', b'\xff\xfe'][i % 4])
        lines.append(json.dumps({"text": text}).encode())
    return b"\n".join(lines) + b"\n"


def _config(tmp_path: Path, sources: list[SourceConfig], unit_mb: float = 128,
            **data) -> DataConfig:
    return DataConfig(sources=sources, store=str(tmp_path / "store"),
                      cache_dir=str(tmp_path / "cache"), prepare={"unit_mb": unit_mb}, **data)


def _prepare(config: DataConfig, tmp_path: Path) -> prepare.PrepareResult:
    return prepare.prepare_store(config, tmp_path, in_process=True, progress=False)


def _assert_store_is_the_token_cache(config: DataConfig, tmp_path: Path) -> store.TokenStore:
    token_store = store.TokenStore.open(prepare.store_root(config, tmp_path))
    limit = LengthLimit(config.max_document_chars, config.long_documents)
    for source in config.sources:
        resolved = source.model_copy(update={"paths": [resolve_path(p, tmp_path)
                                                       for p in source.paths]})
        reference = token_cache.load_or_build(resolved, TOKENIZER, tmp_path / "cache", limit)
        got = token_store.source(source.name)
        assert len(got) == len(reference.tokens) > 0
        assert np.array_equal(got[:], np.asarray(reference.tokens)), source.name
        assert token_store.manifest.sources[source.name]["stats"] == reference.stats
        ends = np.flatnonzero(np.asarray(reference.tokens) == TOKENIZER.eos_id)
        assert got.num_documents == len(ends)
        assert [got.document_end(d) for d in (0, len(ends) - 1)] == [ends[0], ends[-1]]
    token_store.check()
    return token_store


def _write_parquet(path: Path, texts: list, row_group_size: int, column: str = "text") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: texts}), path, row_group_size=row_group_size)


# -- the store is today's cache, for every kind of unit --------------------------------------


def test_jsonl_and_text_small_files_grouped(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"part-{i:02d}.jsonl").write_bytes(_jsonl_lines(_documents(20, i), bad_every=7))
    (docs / "empty.jsonl").write_bytes(b"")
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(5):
        (texts / f"{i}.txt").write_text(_documents(1, 100 + i)[0] * 3)
    config = _config(tmp_path, [SourceConfig(name="docs", paths=["docs"], weight=1),
                                SourceConfig(name="texts", paths=["texts"], weight=1)],
                     unit_mb=0.004)
    result = _prepare(config, tmp_path)
    assert result.written == result.shards > 2  # small files grouped, several groups
    _assert_store_is_the_token_cache(config, tmp_path)


def test_parquet_cut_into_runs_of_row_groups(tmp_path):
    texts = _documents(400) + [None, "", b"bytes \xe2\x82\xac"]
    _write_parquet(tmp_path / "a.parquet", texts, row_group_size=40)
    config = _config(tmp_path, [SourceConfig(name="pq", paths=["a.parquet"], weight=1)],
                     unit_mb=0.004)
    units = plan_source(config.sources[0].model_copy(
        update={"paths": [str(tmp_path / "a.parquet")]}), 4000, LengthLimit())
    assert len(units) > 2 and {u.kind for u in units} == {"rows"}
    assert _prepare(config, tmp_path).shards == len(units)
    _assert_store_is_the_token_cache(config, tmp_path)


def test_big_jsonl_cut_into_byte_ranges_with_absolute_bad_lines(tmp_path):
    (tmp_path / "big.jsonl").write_bytes(_jsonl_lines(_documents(300), bad_every=23))
    config = _config(tmp_path, [SourceConfig(name="big", paths=["big.jsonl"], weight=1)],
                     unit_mb=0.003, max_document_chars=150, long_documents="split")
    result = _prepare(config, tmp_path)
    assert result.shards > 5
    token_store = _assert_store_is_the_token_cache(config, tmp_path)
    first_bad = token_store.manifest.sources["big"]["stats"]["first_bad"]
    assert first_bad and all("@" not in location for location in first_bad)  # absolute lines


def test_gz_file_is_one_unit(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(_jsonl_lines(_documents(200), bad_every=11))
    config = _config(tmp_path, [SourceConfig(name="gz", paths=["a.jsonl.gz"], weight=1)],
                     unit_mb=0.001)
    result = _prepare(config, tmp_path)
    assert result.shards == 1  # a compressed file is never cut
    _assert_store_is_the_token_cache(config, tmp_path)


def test_builtin_corpus_and_a_rerun_redoes_nothing(tmp_path):
    config = _config(tmp_path, DataConfig().sources)
    first = _prepare(config, tmp_path)
    assert (first.shards, first.written) == (3, 3)
    _assert_store_is_the_token_cache(config, tmp_path)
    again = _prepare(config, tmp_path)
    assert (again.written, again.skipped, again.digest) == (0, 3, first.digest)
    assert prepare.store_status(config, tmp_path).state == "current"


def test_any_task_order_gives_the_same_store(tmp_path):
    (tmp_path / "big.jsonl").write_bytes(_jsonl_lines(_documents(200)))
    sources = [SourceConfig(name="big", paths=["big.jsonl"], weight=1)]
    in_order = _prepare(_config(tmp_path / "a", sources, unit_mb=0.002), tmp_path)
    shuffled_root = tmp_path / "b" / "store"
    config = _config(tmp_path / "b", sources, unit_mb=0.002)
    units = plan_source(sources[0].model_copy(update={"paths": [str(tmp_path / "big.jsonl")]}),
                        2000, LengthLimit())
    random.Random(1).shuffle(units)
    for unit in units:
        run_unit(str(shuffled_root), unit, TOKENIZER)
    shuffled = _prepare(config, tmp_path)
    assert (shuffled.written, shuffled.skipped) == (0, len(units))
    assert shuffled.digest == in_order.digest
    assert np.array_equal(store.TokenStore.open(str(shuffled_root)).source("big")[:],
                          store.TokenStore.open(in_order.root).source("big")[:])


# -- resume and edits ---------------------------------------------------------------------


def test_an_edited_file_retokenises_only_its_own_shard(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(24):
        (docs / f"{i:02d}.jsonl").write_bytes(_jsonl_lines(_documents(10, i)))
    config = _config(tmp_path, [SourceConfig(name="docs", paths=["docs"], weight=1)],
                     unit_mb=0.02)
    first = _prepare(config, tmp_path)
    assert first.shards > 3
    edited = docs / "13.jsonl"
    edited.write_bytes(edited.read_bytes() + _jsonl_lines(["one more document"]))
    status = prepare.store_status(config, tmp_path)
    assert status.state == "stale" and str(edited) in status.reason
    second = _prepare(config, tmp_path)
    assert (second.written, second.skipped) == (1, first.shards - 1)
    _assert_store_is_the_token_cache(config, tmp_path)


def test_a_killed_driver_reruns_with_no_committed_shard_redone(tmp_path, capsys):
    """The driver is SIGKILLed while its last unit blocks reading a FIFO; the rerun counts."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.txt").write_text(_documents(1, i)[0] * 40)
    fifo = data / "9-last.txt"
    os.mkfifo(fifo)
    config = _config(tmp_path, [SourceConfig(name="t", paths=["data"], weight=1)],
                     unit_mb=0.0001)
    script = ("import sys; from pathlib import Path; from palm_platform.data.config import "
              "DataConfig; from palm_platform.data.prepare import prepare_store; "
              "prepare_store(DataConfig.model_validate_json(sys.argv[1]), Path(sys.argv[2]), "
              "in_process=True, progress=False)")
    driver = subprocess.Popen([sys.executable, "-c", script, config.model_dump_json(),
                               str(tmp_path)])
    root = tmp_path / "store"
    deadline = time.monotonic() + 120
    while len(list(root.glob("t/*.json"))) < 4:
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert palm(["data", "info", str(root), "--json"]) == 0  # shards committed so far
    info = json.loads(capsys.readouterr().out)
    assert (info["shards"], info["planned"], info["complete"]) == (4, 5, False)
    assert prepare.store_status(config, tmp_path).state == "incomplete"
    fifo.unlink()
    fifo.write_text("the last document")
    rerun = _prepare(config, tmp_path)
    assert (rerun.shards, rerun.skipped, rerun.written) == (5, 4, 1)
    _assert_store_is_the_token_cache(config, tmp_path)


def test_store_status_names_what_changed(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_jsonl_lines(_documents(5)))
    config = _config(tmp_path, [SourceConfig(name="a", paths=["a.jsonl"], weight=1)])
    assert prepare.store_status(config, tmp_path).state == "missing"
    _prepare(config, tmp_path)
    assert prepare.store_status(config, tmp_path).state == "current"
    model = train_tokenizer(_documents(300), tmp_path / "other", 300, model_type="bpe",
                            num_threads=1)
    other = config.model_copy(update={"tokenizer": str(model)})
    status = prepare.store_status(other, tmp_path)
    assert status.state == "stale"
    assert TOKENIZER.sha256 in status.reason and load_tokenizer(str(model)).sha256 in status.reason
    default_root = config.model_copy(update={"store": None})
    assert prepare.store_root(default_root, tmp_path) != prepare.store_root(
        default_root.model_copy(update={"tokenizer": str(model)}), tmp_path)


# -- the commands ---------------------------------------------------------------------------


def _job(tmp_path: Path, data: dict, name: str = "job") -> Path:
    job = yaml.safe_load((REPO / "jobs" / "local-cpu.yaml").read_text())
    job.update(data=data, run_dir=str(tmp_path / "runs"))
    job["checkpoint"]["directory"] = str(tmp_path / "ckpt")
    job["train"].pop("compile_cache", None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_info_json_after_prepare(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_bytes(_jsonl_lines(_documents(30), bad_every=9))
    config = _config(tmp_path, [SourceConfig(name="a", paths=["a.jsonl"], weight=1)],
                     unit_mb=0.002)
    result = _prepare(config, tmp_path)
    assert palm(["data", "info", str(tmp_path / "store"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {k: info[k] for k in ("shards", "complete", "documents", "tokens", "digest")} == {
        "shards": result.shards, "complete": True, "documents": result.documents,
        "tokens": result.tokens, "digest": result.digest}
    assert info["tokenizer_sha256"] == TOKENIZER.sha256


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A complete three-shard store (and its job) that the bad-input tests damage copies of."""
    tmp_path = tmp_path_factory.mktemp("prepared")
    (tmp_path / "a.jsonl").write_bytes(_jsonl_lines(_documents(60)))
    config = _config(tmp_path, [SourceConfig(name="a", paths=["a.jsonl"], weight=1)],
                     unit_mb=0.002)
    _prepare(config, tmp_path)
    return tmp_path


def _copy(prepared: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(prepared / "store", tmp_path / "store")
    shutil.copy(prepared / "a.jsonl", tmp_path / "a.jsonl")
    return tmp_path / "store"


def _one_line_exit_2(argv: list[str], capsys, *needles: str) -> None:
    assert palm(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_info_names_a_torn_or_missing_shard(prepared, tmp_path, capsys):
    root = _copy(prepared, tmp_path)
    shards = sorted(root.glob("a/*.json"))
    torn = shards[1].with_suffix("")
    original = shards[1].read_text()
    sidecar = json.loads(original)
    sidecar["tokens"] += 5
    shards[1].write_text(json.dumps(sidecar))
    # an edited count: the sidecars are read by --deep (the cheap check reads the manifest)
    _one_line_exit_2(["data", "info", "--deep", str(root)], capsys, "damaged shard",
                     torn.name, "the manifest")
    shards[1].write_text("{torn")
    _one_line_exit_2(["data", "info", str(root)], capsys, "damaged shard", torn.name,
                     "its sidecar is 5 bytes", "(torn)")
    _one_line_exit_2(["data", "info", "--deep", str(root)], capsys, "torn sidecar", torn.name)
    shards[1].write_text(original)
    shards[2].unlink()
    _one_line_exit_2(["data", "info", str(root)], capsys, "shard missing (no sidecar)",
                     shards[2].stem)


def test_prepare_refuses_bad_input_and_writes_nothing(prepared, tmp_path, capsys):
    root = _copy(prepared, tmp_path)
    manifest = (root / "manifest.json").read_bytes()
    source = {"name": "a", "paths": ["a.jsonl"], "weight": 1}
    cases = []
    cases.append((_job(tmp_path, {"store": "store", "sources": [
        source, {"name": "b", "paths": ["nope.jsonl"], "weight": 1}],
        "prepare": {"unit_mb": 0.002}}, "missing"), ["nope.jsonl", "does not exist"]))
    model = train_tokenizer(_documents(300), tmp_path / "other", 300, model_type="bpe",
                            num_threads=1)
    cases.append((_job(tmp_path, {"store": "store", "sources": [source],
                                  "tokenizer": str(model), "prepare": {"unit_mb": 0.002}},
                        "tokenizer"),
                   [TOKENIZER.sha256, load_tokenizer(str(model)).sha256]))
    _write_parquet(tmp_path / "b.parquet", ["x", "y"], 1, column="body")
    cases.append((_job(tmp_path, {"store": "store", "sources": [
        source, {"name": "b", "paths": ["b.parquet"], "weight": 1}],
        "prepare": {"unit_mb": 0.002}}, "parquet"), ["b.parquet", "no column 'text'",
                                                     "text_field"]))
    for job, needles in cases:
        _one_line_exit_2(["data", "prepare", str(job)], capsys, *needles)
        assert (root / "manifest.json").read_bytes() == manifest


def test_prepare_rewrites_the_shard_of_a_torn_sidecar(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_jsonl_lines(_documents(60)))
    config = _config(tmp_path, [SourceConfig(name="a", paths=["a.jsonl"], weight=1)],
                     unit_mb=0.002)
    first = _prepare(config, tmp_path)
    sidecar = sorted((tmp_path / "store").glob("a/*.json"))[0]
    sidecar.write_text("{torn")  # a partial upload of the commit
    again = _prepare(config, tmp_path)
    assert (again.written, again.skipped) == (1, first.shards - 1)
    assert again.digest == first.digest


def test_gs_store_without_credentials_is_refused(tmp_path, capsys, monkeypatch):
    from palm_platform.storage.env import COMPANION_VARS, URL_VARS

    for name in (*URL_VARS, *COMPANION_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    (tmp_path / "a.jsonl").write_bytes(_jsonl_lines(_documents(3)))
    job = _job(tmp_path, {"store": "gs://palm-nowhere/store", "sources": [
        {"name": "a", "paths": ["a.jsonl"], "weight": 1}]})
    _one_line_exit_2(["data", "prepare", str(job)], capsys, "credentials", "Fix:")


@pytest.mark.slow
def test_gs_store_on_the_emulator_round_trips(gcs_bucket, tmp_path):
    (tmp_path / "big.jsonl").write_bytes(_jsonl_lines(_documents(120), bad_every=13))
    sources = [SourceConfig(name="big", paths=["big.jsonl"], weight=1)]
    config = DataConfig(sources=sources, store=f"{gcs_bucket}/store",
                        cache_dir=str(tmp_path / "cache"), prepare={"unit_mb": 0.003})
    result = _prepare(config, tmp_path)
    assert result.root.startswith("gs://") and result.shards > 2
    _assert_store_is_the_token_cache(config, tmp_path)
    again = _prepare(config, tmp_path)
    assert (again.written, again.digest) == (0, result.digest)
    assert prepare.store_status(config, tmp_path).state == "current"


def test_one_file_in_two_sources_makes_a_shard_in_each(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_jsonl_lines(_documents(20)))
    config = _config(tmp_path, [SourceConfig(name="x", paths=["a.jsonl"], weight=1),
                                SourceConfig(name="y", paths=["a.jsonl"], weight=1)])
    result = _prepare(config, tmp_path)
    assert (result.shards, result.written) == (2, 2)
    _assert_store_is_the_token_cache(config, tmp_path)


def test_one_file_growing_moves_only_the_groups_next_to_it():
    """Run boundaries follow path hashes (the size cap aside): a grown file changes its own
    group's name and at most its neighbours', never every later group."""
    rng = random.Random(0)
    listing = [(f"/data/part-{i:04d}.jsonl", rng.randint(1000, 3000), "t0") for i in range(400)]
    source = SourceConfig(name="s", paths=["/data"], weight=1)
    before = plan_source(source, 40_000, LengthLimit(), listing)
    grown = list(listing)
    grown[150] = (grown[150][0], grown[150][1] * 3, "t1")
    after = plan_source(source, 40_000, LengthLimit(), grown)
    assert len(before) > 20
    changed = {u.name for u in after} - {u.name for u in before}
    assert 1 <= len(changed) <= 3
    assert [f for u in after for f in u.files] == [p for p, _, _ in listing]  # input order
