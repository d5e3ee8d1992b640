"""Pipeline: packing, mixture, per-host shares, exact resume and skips are index arithmetic."""

import json

import numpy as np
import pytest

from palm_platform.data import DataConfig, DataConfigError, SourceConfig, build_pipeline
from palm_platform.data.packing import PackedSequences
from tests.support.token_store import write_token_store

EOS = 1
SEQ_LEN = 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Pre-tokenised sources whose tokens say where they came from.

    "numbers": one long document 3..1002, so a sequence's first token names its position;
    "low"/"high": documents of ids below / above 500, to tell the sources apart.
    """
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    write_token_store(root / "store", {
        "numbers": [np.arange(3, 1003)],
        "low": [rng.integers(3, 500, 50) for _ in range(40)],
        "high": [rng.integers(500, 1024, 50) for _ in range(40)]})
    docs = ["Hello world.", "Zweites Dokument\n\tmit Tab.", "第三个文档", "def f():\n    pass\n"]
    (root / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs * 10))
    return root


PRETOKENISED = {"numbers", "low", "high"}  # sources of data_dir's store, by name


def _config(*sources: tuple[str, float], seed: int = 0, window: int = 64) -> DataConfig:
    names = {n.split(".")[0] for n, _ in sources}
    return DataConfig(
        sources=[SourceConfig(name=n.split(".")[0], paths=[n], weight=w) for n, w in sources],
        seed=seed,
        shuffle_window=window,
        store="store" if names <= PRETOKENISED else None,  # relative to the data folder
    )


def _pipeline(data_dir, config, process_index=0, process_count=1, seq_len=SEQ_LEN):
    return build_pipeline(
        config, seq_len=seq_len, base_dir=data_dir, process_index=process_index,
        process_count=process_count, cache_dir=data_dir / "cache",
    )  # fmt: skip


MIXED = _config(("low", 3.0), ("high", 1.0), ("numbers", 1.0))


def test_packing_joins_documents_with_eos_into_exact_windows(data_dir):
    pipeline = _pipeline(data_dir, _config(("docs.jsonl", 1.0)))
    tokenizer = pipeline.tokenizer
    texts = [json.loads(line)["text"] for line in (data_dir / "docs.jsonl").read_text().split("\n")]
    expected = np.concatenate([np.array([*tokenizer.encode(t), EOS]) for t in texts])
    tokens = pipeline._sources[0].tokens[:]  # the store view, read whole (a small source)
    np.testing.assert_array_equal(tokens, expected)
    packed = PackedSequences(tokens, SEQ_LEN)
    assert len(packed) == (len(tokens) - 1) // SEQ_LEN
    windows = [packed[i] for i in range(len(packed))]
    assert all(len(w) == SEQ_LEN + 1 for w in windows)  # no short, no padded windows
    stitched = np.concatenate([windows[0], *[w[1:] for w in windows[1:]]])
    np.testing.assert_array_equal(stitched, tokens[: len(stitched)])  # overlap by one token


def test_local_batch_is_int32_rows_of_seq_len_plus_one(data_dir):
    batch = _pipeline(data_dir, MIXED).local_batch(6)
    assert batch.shape == (6, SEQ_LEN + 1) and batch.dtype == np.int32


def test_mixture_follows_weights_and_is_deterministic(data_dir):
    batches = _pipeline(data_dir, MIXED).local_batch(1000)
    again = _pipeline(data_dir, MIXED).local_batch(1000)
    np.testing.assert_array_equal(batches, again)
    is_numbers = np.all(np.diff(batches, axis=1) == 1, axis=1)
    is_low = ~is_numbers & (batches.max(axis=1) < 500)  # EOS (1) is below 500
    is_high = ~is_numbers & (np.where(batches == EOS, 500, batches).min(axis=1) >= 500)
    shares = [is_low.mean(), is_high.mean(), is_numbers.mean()]
    np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.03)


def test_a_different_seed_gives_different_batches(data_dir):
    first = _pipeline(data_dir, MIXED).local_batch(16)
    other = _pipeline(data_dir, MIXED.model_copy(update={"seed": 1})).local_batch(16)
    assert not np.array_equal(first, other)


def test_process_shares_concatenate_to_the_single_process_batch(data_dir):
    single = _pipeline(data_dir, MIXED)
    hosts = [_pipeline(data_dir, MIXED, process_index=p, process_count=2) for p in range(2)]
    for global_batch_size in (4, 4, 8, 16, 2):  # a batch-size ramp
        expected = single.local_batch(global_batch_size)
        shares = [host.local_batch(global_batch_size) for host in hosts]
        assert shares[0].shape == (global_batch_size // 2, SEQ_LEN + 1)
        np.testing.assert_array_equal(np.concatenate(shares), expected)


def test_batch_size_must_divide_among_processes(data_dir):
    with pytest.raises(ValueError, match="multiple of 2, the blocks"):
        _pipeline(data_dir, MIXED, process_count=2).local_batch(3)


def test_restored_state_gives_bitwise_the_same_next_batches(data_dir):
    uninterrupted = _pipeline(data_dir, MIXED)
    for size in (4, 8, 8):
        uninterrupted.local_batch(size)
    state = json.loads(json.dumps(uninterrupted.get_state()))  # as stored in a checkpoint
    restored = _pipeline(data_dir, MIXED)
    restored.set_state(state)
    for size in (8, 16, 4):
        np.testing.assert_array_equal(restored.local_batch(size), uninterrupted.local_batch(size))


def test_skipped_sequences_are_never_yielded_and_survive_a_restart(data_dir):
    config = _config(("numbers", 1.0), window=1)
    reference = _pipeline(data_dir, config)
    pipeline = _pipeline(data_dir, config)
    pipeline.local_batch(4)
    pipeline.add_skip_range(4, 10)  # what a rollback records for the batches it skips
    state = json.loads(json.dumps(pipeline.get_state()))
    assert state["next_sequence"] == 4 and state["skip_ranges"] == [[4, 10]]
    restarted = _pipeline(data_dir, config)
    restarted.set_state(state)
    np.testing.assert_array_equal(restarted.local_batch(4), reference.sequences(range(10, 14)))
    # Rolling back to before the skipped range (restored checkpoint + the skip ledger):
    # the range is jumped over, the batch is the 4 sequences around it.
    restarted.set_state({**state, "next_sequence": 2})
    np.testing.assert_array_equal(restarted.local_batch(4), reference.sequences([2, 3, 10, 11]))
    # ... and then carries on after it: global sequences 4..9 are never yielded.
    np.testing.assert_array_equal(restarted.local_batch(20), reference.sequences(range(12, 32)))


def test_future_skip_ranges_from_a_ledger_are_jumped(data_dir):
    reference = _pipeline(data_dir, MIXED)
    pipeline = _pipeline(data_dir, MIXED)
    pipeline.add_skip_range(3, 5)
    pipeline.add_skip_range(4, 7)  # overlapping ranges merge
    assert pipeline.get_state()["skip_ranges"] == [[3, 7]]
    np.testing.assert_array_equal(pipeline.local_batch(6), reference.sequences([0, 1, 2, 7, 8, 9]))


def test_a_source_shorter_than_one_sequence_is_a_clear_error(data_dir):
    config = _config(("docs.jsonl", 1.0))
    with pytest.raises(DataConfigError, match=r"data\.sources\[0\].*fewer than seq_len \+ 1"):
        _pipeline(data_dir, config, seq_len=100_000)


def test_an_edited_input_file_makes_the_store_stale_on_the_driver_not_in_a_pipeline(tmp_path):
    from palm_platform.data.prepare import prepare_store, store_status

    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"first version {i}"}) for i in range(30)))
    config = _config(("a.jsonl", 1.0)).model_copy(update={"cache_dir": str(tmp_path / "cache")})
    first = _pipeline(tmp_path, config)
    assert first.tokenizer.decode(first._sources[0].tokens[:6]).startswith("first")
    path.write_text(
        "\n".join(json.dumps({"text": f"second, longer version {i}"}) for i in range(30))
    )
    # a training process opens the manifest only: it never lists the inputs again
    again = _pipeline(tmp_path, config)
    assert again.tokenizer.decode(again._sources[0].tokens[:6]).startswith("first")
    # the driver (`palm run`, `palm data prepare`) finds it stale and prepares it again
    assert store_status(config, tmp_path).state == "stale"
    prepare_store(config, tmp_path, in_process=True, progress=False)
    second = _pipeline(tmp_path, config)
    assert second.tokenizer.decode(second._sources[0].tokens[:6]).startswith("second")


def test_the_embedded_default_corpus_runs_offline(tmp_path):
    pipeline = build_pipeline(
        DataConfig(), seq_len=128, base_dir=tmp_path, process_index=0, process_count=1,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    stats = pipeline.stats()
    assert sum(s["tokens"] for s in stats["sources"].values()) > 300_000
    assert stats["bad_records"] == 0
    batch = pipeline.local_batch(8)
    assert batch.shape == (8, 129) and batch.max() < pipeline.vocab_size
