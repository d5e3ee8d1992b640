"""Adjacent, overlapping, nested and unsorted skip ranges: the pipeline and the pure
restatement in supervise/positions.py agree with a plain set-difference reference."""

import numpy as np
import pytest

from palm_platform.data import DataConfig, build_pipeline
from palm_platform.supervise.positions import batch_sequence_indices, first_unskipped
from tests.support.token_store import source, write_token_store

SEQ_LEN = 4

CASES = {
    "adjacent": [(3, 5), (5, 7)],
    "adjacent_reversed": [(5, 7), (3, 5)],
    "overlapping": [(3, 6), (4, 9)],
    "nested": [(2, 12), (4, 6)],
    "touching_chain": [(10, 12), (4, 6), (6, 10)],
    "apart": [(1, 2), (4, 5), (7, 8)],
    "at_zero": [(0, 3), (3, 4)],
    "empty_range": [(5, 5), (6, 8)],
}


def reference_indices(ranges, start, count):
    """The first `count` indices >= start not inside any [a, b)."""
    out, index = [], start
    while len(out) < count:
        if not any(a <= index < b for a, b in ranges):
            out.append(index)
        index += 1
    return out


def merged(ranges):
    """Sorted, disjoint, with touching ranges joined (empty ones dropped)."""
    result = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if result and a <= result[-1][1]:
            result[-1][1] = max(result[-1][1], b)
        else:
            result.append([a, b])
    return result


@pytest.fixture(scope="module")
def pipeline_factory(tmp_path_factory):
    root = tmp_path_factory.mktemp("skips")
    # One long document: every packed sequence is distinct, so equal batches mean equal indices.
    config = DataConfig(
        store=write_token_store(root / "store", {"numbers": [np.arange(3, 503)]}),
        sources=[source("numbers")],
        seed=0,
        shuffle_window=1,
    )

    def make():
        return build_pipeline(config, seq_len=SEQ_LEN, base_dir=root, process_index=0,
                              process_count=1, cache_dir=root / "cache")

    return make


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_merges_ranges_and_yields_only_unskipped_sequences(pipeline_factory, name):
    ranges = CASES[name]
    pipeline, reference = pipeline_factory(), pipeline_factory()
    for a, b in ranges:
        pipeline.add_skip_range(a, b)
    assert pipeline.get_state()["skip_ranges"] == merged(ranges)
    expected = reference_indices(ranges, 0, 16)
    got = np.concatenate([pipeline.local_batch(6), pipeline.local_batch(10)])
    np.testing.assert_array_equal(got, reference.sequences(expected))
    assert pipeline.next_sequence == expected[-1] + 1


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("start", [0, 3, 4, 5, 6, 9])
def test_positions_agree_with_the_reference_from_any_start(name, start):
    ranges = CASES[name]
    state = {"next_sequence": start, "skip_ranges": [list(r) for r in ranges]}
    expected = reference_indices(ranges, start, 7)
    assert first_unskipped(state) == expected[0]
    np.testing.assert_array_equal(batch_sequence_indices(state, 7), expected)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("start", [0, 3, 5, 6])
def test_pipeline_from_a_restored_state_agrees_with_positions(pipeline_factory, name, start):
    ranges = CASES[name]
    pipeline = pipeline_factory()
    for a, b in ranges:
        pipeline.add_skip_range(a, b)
    state = {**pipeline.get_state(), "next_sequence": start}
    expected = batch_sequence_indices(state, 5)
    pipeline.set_state(state)
    np.testing.assert_array_equal(pipeline.local_batch(5), pipeline.sequences(expected))


def test_adjacent_skip_ranges_merge_and_are_jumped_as_one(pipeline_factory):
    reference = pipeline_factory()
    pipeline = pipeline_factory()
    pipeline.add_skip_range(2, 4)
    pipeline.add_skip_range(4, 6)
    pipeline.add_skip_range(6, 9)
    pipeline.local_batch(2)  # sequences 0, 1; next is 2, inside the skipped [2, 9)
    assert pipeline.get_state()["skip_ranges"] == [[2, 9]]
    np.testing.assert_array_equal(pipeline.local_batch(1), reference.sequences([9]))


def test_bad_skip_ranges_are_refused(pipeline_factory):
    pipeline = pipeline_factory()
    with pytest.raises(ValueError, match="bad skip range"):
        pipeline.add_skip_range(5, 4)
    with pytest.raises(ValueError, match="bad skip range"):
        pipeline.add_skip_range(-1, 4)


def test_an_empty_global_batch_is_refused(pipeline_factory):
    with pytest.raises(ValueError, match="positive multiple"):
        pipeline_factory().local_batch(0)


def test_a_state_without_seed_or_seq_len_restores_quietly(pipeline_factory, caplog):
    pipeline = pipeline_factory()
    pipeline.add_skip_range(2, 4)
    pipeline.set_state({"next_sequence": 3, "skip_ranges": [[2, 4]]})  # an older, shorter state
    pipeline.set_state(pipeline.get_state())  # the same seed and seq_len: nothing to warn about
    assert pipeline.next_sequence == 3 and "saved with" not in caplog.text
    pipeline.set_state({**pipeline.get_state(), "seed": 99})
    assert "saved with seed=99" in caplog.text
