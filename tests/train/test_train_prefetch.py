"""The prefetch thread reads exactly the batches the loop would, with their data states,
and a failure on the thread reaches the loop with its cause."""

import numpy as np
import pytest

from palm_platform.data import DataConfig, build_pipeline
from palm_platform.train.prefetch import Prefetcher, PrefetchError
from tests.support.token_store import source, write_token_store

SEQ_LEN = 8


def batch_size_at(step: int) -> int:
    return 4 if step < 3 else 8  # a ramp, as in PaLM's schedule


@pytest.fixture
def pipeline(tmp_path):
    config = DataConfig(
        store=write_token_store(tmp_path / "store",
                                {"numbers": [np.arange(3, 1003) for _ in range(3)]}),
        sources=[source("numbers")],
        seed=0,
        shuffle_window=16,
    )
    return build_pipeline(config, seq_len=SEQ_LEN, base_dir=tmp_path, process_index=0,
                          process_count=1, cache_dir=tmp_path / "cache")


def read_directly(pipeline, first: int, last: int):
    out = []
    for step in range(first, last):
        before = pipeline.get_state()
        out.append((before, pipeline.local_batch(batch_size_at(step)), pipeline.get_state()))
    return out


def test_batches_and_states_equal_direct_reads_across_a_stop_and_a_skip(pipeline):
    start = pipeline.get_state()
    pipeline.add_skip_range(40, 60)
    expected = read_directly(pipeline, 0, 8)
    pipeline.set_state(start)
    pipeline.add_skip_range(40, 60)
    prefetcher = Prefetcher(pipeline, first_step=0, last_step=8, batch_size_at=batch_size_at,
                            place=lambda local: local * 2, depth=2)
    got = [prefetcher.next() for _ in range(5)]
    prefetcher.stop()  # it read ahead; the caller rewinds, as a rollback does
    pipeline.set_state(got[-1].data_state_after)
    prefetcher = Prefetcher(pipeline, first_step=5, last_step=8, batch_size_at=batch_size_at,
                            place=lambda local: local * 2)
    got += [prefetcher.next() for _ in range(3)]
    prefetcher.stop()
    for step, (batch, (before, local, after)) in enumerate(zip(got, expected, strict=True)):
        assert (batch.step, batch.batch_size) == (step, batch_size_at(step))
        assert batch.data_state == before and batch.data_state_after == after
        np.testing.assert_array_equal(batch.local, local)
        np.testing.assert_array_equal(batch.array, local * 2)


def test_a_failure_on_the_thread_surfaces_with_its_cause(pipeline):
    def place(local):
        raise MemoryError("no room on the devices")

    prefetcher = Prefetcher(
        pipeline, first_step=0, last_step=4, batch_size_at=batch_size_at, place=place
    )
    with pytest.raises(PrefetchError, match="MemoryError: no room on the devices") as caught:
        prefetcher.next()
    assert isinstance(caught.value.__cause__, MemoryError)
    prefetcher.stop()


def test_asking_past_the_last_step_is_an_error_not_a_hang(pipeline):
    prefetcher = Prefetcher(pipeline, first_step=0, last_step=1, batch_size_at=batch_size_at,
                            place=lambda local: local)
    prefetcher.next()
    with pytest.raises(PrefetchError, match="past its last step"):
        prefetcher.next()
    prefetcher.stop()
