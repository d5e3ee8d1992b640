"""The token store changes where tokens come from, not what a batch is.

On the embedded corpus with jobs/local-cpu.yaml's data section, batch schedule and held-out
split, the batches of steps 0-60 read from the token store are bitwise those of the
pipeline over today's single-process cache (token_cache.load_or_build, kept as this
reference), for one process and for the job's four, and the same documents are held out.
"""

from pathlib import Path

import numpy as np
import pytest

from palm_platform.data.pipeline import Pipeline, build_pipeline, check_data
from palm_platform.data.token_cache import LengthLimit, load_or_build
from palm_platform.eval.split import split_sources
from palm_platform.job import load_job

JOB_FILE = Path(__file__).resolve().parents[1] / "jobs" / "local-cpu.yaml"
STEPS = range(61)


@pytest.fixture(scope="module")
def job():
    return load_job(JOB_FILE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("store")


def _split(job, sources, tokenizer, records: list):
    split = split_sources(sources, tokenizer.eos_id, job.eval.heldout_fraction,
                          job.eval.split_seed, None)
    records.append(split.record)
    return split.train


def _today(job, cache_dir, process_index, process_count, records):
    tokenizer, resolved = check_data(job.data, JOB_FILE.parent)
    limit = LengthLimit(job.data.max_document_chars, job.data.long_documents)
    sources = [load_or_build(s, tokenizer, cache_dir, 1, limit) for s in resolved]
    return Pipeline(job.data.model_copy(update={"sources": resolved}),
                    _split(job, sources, tokenizer, records), tokenizer, seq_len=job.seq_len,
                    process_index=process_index, process_count=process_count)


def _from_store(job, store_cache, process_index, process_count, records):
    return build_pipeline(job.data, seq_len=job.seq_len, base_dir=JOB_FILE.parent,
                          process_index=process_index, process_count=process_count,
                          cache_dir=store_cache,
                          source_filter=lambda s, tok: _split(job, s, tok, records))


def test_each_source_stream_in_the_store_is_todays_cache(job, folders):
    cache_dir, store_cache = folders
    today = _today(job, cache_dir, 0, 1, [])
    store = _from_store(job, store_cache, 0, 1, [])
    for old, new in zip(today._sources, store._sources, strict=True):
        assert len(old.tokens) == len(new.tokens)
        np.testing.assert_array_equal(new.tokens[:], old.tokens[:])
    assert store.stats()["sources"] == today.stats()["sources"]


@pytest.mark.parametrize("process_count", [1, 4])
def test_batches_of_steps_0_to_60_are_bitwise_todays(job, folders, process_count):
    cache_dir, store_cache = folders
    for process_index in range(process_count):
        old_records, new_records = [], []
        today = _today(job, cache_dir, process_index, process_count, old_records)
        store = _from_store(job, store_cache, process_index, process_count, new_records)
        assert new_records == old_records  # the same documents held out
        assert any(s["heldout"] for s in new_records[0]["sources"].values())
        for step in STEPS:
            size = job.train.batch_size_at(step)
            expected = today.local_batch(size)
            got = store.local_batch(size)
            assert got.shape == (size // process_count, job.seq_len + 1)
            np.testing.assert_array_equal(got, expected, err_msg=f"step {step}")
