"""The token store changes where tokens come from, not what a batch is.

With jobs/local-cpu.yaml's data section, batch schedule and held-out split, the batches of
steps 0-60 read from the token store are bitwise those of the pipeline over the
single-process cache the store replaced (tests/support/token_cache_reference.py, kept as this
reference), for one process and for the job's four, and the same documents are held out.
Twice: on the embedded corpus itself (one shard per source), and on the same documents
written out as JSONL and prepared in small units, so that windows and held-out documents
cross shard boundaries.
"""

import json

import numpy as np
import pytest

from palm_platform.data.config import PrepareConfig
from palm_platform.data.corpus import iter_builtin_documents
from palm_platform.data.documents import LengthLimit
from palm_platform.data.heldout_split import split_sources
from palm_platform.data.pipeline import Pipeline, build_pipeline, check_data
from palm_platform.data.prepare import store_root
from palm_platform.data.store import TokenStore
from palm_platform.job import load_job
from tests.support.paths import ROOT
from tests.support.token_cache_reference import load_or_build

JOB_FILE = ROOT / "jobs" / "local-cpu.yaml"
STEPS = range(61)


@pytest.fixture(scope="module", params=["embedded", "jsonl-shards"])
def case(request, tmp_path_factory):
    """(job, base_dir, cache folder, store folder) of one corpus layout."""
    job = load_job(JOB_FILE)
    base = JOB_FILE.parent
    if request.param == "jsonl-shards":
        base = tmp_path_factory.mktemp("corpus")
        sources = []
        for source in job.data.sources:
            (part,) = source.paths
            lines = (json.dumps({"text": d}) for d in iter_builtin_documents(part))
            (base / f"{source.name}.jsonl").write_text("\n".join(lines) + "\n")
            sources.append(source.model_copy(update={"paths": [f"{source.name}.jsonl"]}))
        # 10 kB input units: several shards per source (the default, 128 MB, makes one).
        data = job.data.model_copy(update={"sources": sources,
                                           "prepare": PrepareConfig(unit_mb=0.01)})
        job = job.model_copy(update={"data": data})
    store_cache = tmp_path_factory.mktemp("store")
    job = job.model_copy(update={"data": job.data.model_copy(
        update={"cache_dir": str(store_cache)})})
    return request.param, job, base, tmp_path_factory.mktemp("cache")


def _split(job, sources, tokenizer, records: list):
    split = split_sources(sources, tokenizer.eos_id, job.eval.heldout_fraction,
                          job.eval.split_seed, None)
    records.append(split.record)
    return split.train


def _today(job, base, cache_dir, process_index, process_count, records, split=True):
    tokenizer, resolved = check_data(job.data, base)
    limit = LengthLimit(job.data.max_document_chars, job.data.long_documents)
    sources = [load_or_build(s, tokenizer, cache_dir, limit) for s in resolved]
    if split:
        sources = _split(job, sources, tokenizer, records)
    return Pipeline(job.data.model_copy(update={"sources": resolved}), sources, tokenizer,
                    seq_len=job.seq_len, process_index=process_index,
                    process_count=process_count)


def _from_store(job, base, process_index, process_count, records, split=True):
    return build_pipeline(job.data, seq_len=job.seq_len, base_dir=base,
                          process_index=process_index, process_count=process_count,
                          source_filter=(lambda s, tok: _split(job, s, tok, records))
                          if split else None)


def test_each_source_stream_in_the_store_is_todays_cache(case):
    layout, job, base, cache_dir = case
    today = _today(job, base, cache_dir, 0, 1, [], split=False)
    store = _from_store(job, base, 0, 1, [], split=False)
    manifest = TokenStore.open(store_root(job.data, base)).manifest
    shards = [len(manifest.shards(name)) for name in manifest.sources]
    assert min(shards) > 1 if layout == "jsonl-shards" else shards == [1, 1, 1]
    for old, new in zip(today._sources, store._sources, strict=True):
        assert len(old.tokens) == len(new.tokens)
        np.testing.assert_array_equal(new.tokens[:], old.tokens[:])
    assert store.stats()["sources"] == today.stats()["sources"]


@pytest.mark.parametrize("process_count", [1, 4])
def test_batches_of_steps_0_to_60_are_bitwise_todays(case, process_count):
    _, job, base, cache_dir = case
    for process_index in range(process_count):
        old_records, new_records = [], []
        today = _today(job, base, cache_dir, process_index, process_count, old_records)
        store = _from_store(job, base, process_index, process_count, new_records)
        assert new_records == old_records  # the same documents held out
        assert all(s["heldout"] for s in new_records[0]["sources"].values())
        for step in STEPS:
            size = job.train.batch_size_at(step)
            expected = today.local_batch(size)
            got = store.local_batch(size)
            assert got.shape == (size // process_count, job.seq_len + 1)
            np.testing.assert_array_equal(got, expected, err_msg=f"step {step}")
