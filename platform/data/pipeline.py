"""The training-data pipeline: a batch is a pure function of (seed, sequence indices, skips).

PaLM's pipeline wrote its shuffled data in a random-access format so that "the contents of a
given training batch is only a function of the step number"; that made training bitwise
reproducible from any checkpoint and made skipping batches after a loss spike trivial. The
same here, with one change: the position is counted in *sequences*, not steps, because the
batch size ramps up during training (PaLM 540B: 512 -> 1024 -> 2048 sequences).

    global sequence index n  --window shuffle (seed)-->  mixture index
    mixture index            --weighted interleave-->    (source s, index k in s)
    k                        --per-source shuffle, reshuffled every epoch (seed, s)-->
    packed sequence j of source s = tokens_s[j*L : j*L + L + 1]

What Grain does: the random-access datasets (`MapDataset.source`), the per-source global
shuffle (`shuffle`, a Feistel index permutation, reseeded each epoch by `repeat`), the
weighted mixture (`MapDataset.mix`: a deterministic interleave that hits the weights
exactly over every period instead of sampling them, so small batches follow the weights
too) and the windowed shuffle of the mixed stream (`WindowShuffleMapDataset`), all pure
index arithmetic.

What is written by hand, and why: the position (next global sequence index) and the skip
ranges. A Grain `DatasetIterator` checkpoints the position of one iterator that yields one
element at a time; here each process must read only its share of a global batch whose size
changes during training, and skipped ranges must survive restarts and rollbacks. With a
MapDataset both are a few lines of index arithmetic: the global batch is the next
`global_batch_size` indices not in a skip range; process p reads the p-th contiguous slice.
Packing is hand-written too (packing.py). The tokens come from the job's token store
(store.py, prepared once by `palm data prepare` or `palm run`): each source is a view over
its shards, and a batch's windows are read from it concurrently, nothing else.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from palm_platform.data.config import DataConfig, DataConfigError, SourceConfig, resolve_path
from palm_platform.data.packing import PackedSequences, PackedWindows
from palm_platform.data.skips import SkipRanges
from palm_platform.data.store_sources import (
    Source,
    check_inputs,
    open_sources,
    read_windows,
    store_is_complete,
)
from palm_platform.data.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

STATE_VERSION = 1
_MIN_SHUFFLE_DOMAIN = 1 << 16


def derive_seed(seed: int, *parts: str) -> int:
    """A 31-bit seed for one part of the pipeline; stable across runs and Python versions."""
    digest = hashlib.sha256("/".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Pipeline:
    """Packed, mixed, shuffled sequences; this process's share of each global batch."""

    def __init__(
        self,
        config: DataConfig,
        sources: Sequence[Source],
        tokenizer: Tokenizer,
        *,
        seq_len: int,
        process_index: int,
        process_count: int,
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.config = config
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.eos_id = tokenizer.eos_id
        self.seq_len = seq_len
        self.process_index = process_index
        self.process_count = process_count
        # (blocks, mine): the global batch is cut into `blocks` equal blocks and this process
        # reads `mine` (global_array.process_blocks of the mesh's batch sharding, set by the
        # trainer with `read_blocks`); without a mesh, the contiguous 1 / processes share.
        self.blocks: tuple[int, tuple[int, ...]] = (process_count, (process_index,))
        self._sources = list(sources)
        per_source = []
        for i, (source_config, source) in enumerate(zip(config.sources, sources, strict=True)):
            packed = PackedSequences(source.tokens, seq_len)
            if len(packed) == 0:
                raise DataConfigError(
                    f"data.sources[{i}]",
                    f"source {source_config.name!r} has {len(source.tokens)} tokens, fewer than "
                    f"seq_len + 1 = {seq_len + 1} (read stats: {source.stats}). Fix: add text "
                    f"to the source or remove it.",
                )
            # Grain's index arithmetic runs on window descriptors; `sequences` reads them.
            dataset = grain.MapDataset.source(PackedWindows(source.tokens, seq_len))
            if len(packed) < _MIN_SHUFFLE_DOMAIN:
                # Grain's index_shuffle takes ~250 us per index on domains of ~100 and ~4 us
                # on 2^16 and up (measured here); a small source is repeated up to 2^16 first,
                # so each of its "epochs" holds every sequence several times, shuffled.
                dataset = dataset.repeat(-(-_MIN_SHUFFLE_DOMAIN // len(packed)))
            per_source.append(
                dataset.shuffle(
                    seed=derive_seed(config.seed, "source", source_config.name)
                ).repeat()
            )
        self._num_sequences = [len(PackedSequences(s.tokens, seq_len)) for s in sources]
        mixed = grain.MapDataset.mix(per_source, [s.weight for s in config.sources])
        self._dataset = grain.experimental.WindowShuffleMapDataset(
            mixed, window_size=config.shuffle_window, seed=derive_seed(config.seed, "mixture")
        )
        self._next_sequence = 0
        self._skips = SkipRanges()

    # ---- position and skips -------------------------------------------------------------

    def get_state(self) -> dict:
        """JSON-serialisable position; save it with each checkpoint."""
        return {
            "version": STATE_VERSION,
            "next_sequence": self._next_sequence,
            "skip_ranges": self._skips.to_list(),
            "seed": self.config.seed,
            "seq_len": self.seq_len,
            "sources": {s.name: s.weight for s in self.config.sources},
        }

    def set_state(self, state: dict) -> None:
        """Continue from a saved position: the next batches equal the uninterrupted run's."""
        try:
            next_sequence = int(state["next_sequence"])
            ranges = [(int(a), int(b)) for a, b in state.get("skip_ranges", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a data pipeline state ({e}): {state!r}") from e
        for key, mine in (("seed", self.config.seed), ("seq_len", self.seq_len)):
            if key in state and state[key] != mine:
                log.warning(
                    "data state was saved with %s=%s, pipeline has %s", key, state[key], mine
                )
        self._next_sequence = next_sequence
        self._skips = SkipRanges(ranges)

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def add_skip_range(self, start: int, end: int) -> None:
        """Never yield global sequences [start, end) (e.g. from a rollback ledger)."""
        self._skips.add(start, end)

    # ---- batches ------------------------------------------------------------------------

    def sequences(self, indices: Sequence[int]) -> np.ndarray:
        """int32 [len(indices), seq_len + 1]: the sequences at these global indices."""
        return read_windows([self._dataset[int(index)] for index in indices], self.seq_len + 1)

    def read_blocks(self, blocks: int, mine: tuple[int, ...]) -> None:
        """Read the rows of batch blocks `mine` of `blocks` (global_array.process_blocks)."""
        self.blocks = (blocks, tuple(mine))

    def local_rows(self, global_batch_size: int) -> np.ndarray:
        """Which rows of a `global_batch_size` batch this process reads, in order."""
        return block_rows(*self.blocks, global_batch_size)

    def local_batch(self, global_batch_size: int) -> np.ndarray:
        """This process's rows of the next global batch: int32 [rows, seq_len + 1].

        The global batch is the next `global_batch_size` unskipped sequences; a process reads
        the rows of its batch blocks (`local_rows`) and only those sequences.
        """
        rows = self.local_rows(global_batch_size)
        indices, self._next_sequence = self._skips.take(self._next_sequence, global_batch_size)
        return self.sequences(np.asarray(indices)[rows])

    def stats(self) -> dict:
        """Per source: tokens, packed sequences, documents read and bad records skipped."""
        per_source = {
            source.name: {"tokens": int(len(source.tokens)), "sequences": n, **source.stats}
            for source, n in zip(self._sources, self._num_sequences, strict=True)
        }
        bad_total = sum(sum(s["bad"].values()) for s in per_source.values())
        first_bad = [where for s in per_source.values() for where in s.get("first_bad", [])]
        return {"sources": per_source, "bad_records": bad_total, "first_bad": first_bad[:5]}


def block_rows(blocks: int, mine: tuple[int, ...], global_batch_size: int) -> np.ndarray:
    """The rows of batch blocks `mine` when a `global_batch_size` batch is cut into `blocks`
    equal blocks (global_array.process_blocks), in order."""
    if global_batch_size <= 0 or global_batch_size % blocks:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of "
            f"{blocks}, the blocks the batch is cut into (the mesh's pod x data, or the "
            f"process count)"
        )
    per = global_batch_size // blocks
    return np.concatenate([np.arange(b * per, (b + 1) * per) for b in mine])


def check_data(data_config: DataConfig, base_dir: Path, *, inputs: bool = True,
               ) -> tuple[Tokenizer, list[SourceConfig]]:
    """Load the tokenizer and resolve every source path, or raise DataConfigError naming the
    field. Cheap (nothing is tokenised): `palm run` calls it before it starts any worker.

    `inputs`: also check that every path matches a file (on the driver), unless the job's
    store is complete, which is all training reads (the raw inputs may be archived or
    deleted once prepared). Training processes pass False: they never list the inputs."""
    base_dir = Path(base_dir)
    tokenizer_path = resolve_path(data_config.tokenizer, base_dir)
    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except (FileNotFoundError, ValueError) as e:
        raise DataConfigError(
            "data.tokenizer",
            f"{e} (from {data_config.tokenizer!r} relative to {base_dir}). Fix: train one "
            "with `palm tokenizer train` or use builtin:default.",
        ) from e
    resolved = [source.model_copy(update={"paths": [resolve_path(p, base_dir)
                                                    for p in source.paths]})
                for source in data_config.sources]
    if inputs and not store_is_complete(data_config, base_dir):
        check_inputs(data_config, base_dir)
    return tokenizer, resolved


def build_pipeline(
    data_config: DataConfig,
    *,
    seq_len: int,
    base_dir: Path,
    process_index: int,
    process_count: int,
    cache_dir: Path | None = None,
    source_filter=None,
) -> Pipeline:
    """Resolve paths against `base_dir` (the job file's folder) and open the job's token store.

    The store (data.store, else a folder under `cache_dir` or data.cache_dir) is read in
    place, opened by its manifest alone: whether it is current is decided on the driver
    (prepare.store_status). A library caller with no store yet prepares it in this process
    first (store_sources.py), after a path that does not exist fails with the config field
    that names it. `source_filter(sources, tokenizer) -> sources` may take documents out
    before packing (the held-out split, data/heldout_split.py).
    """
    if cache_dir is not None and data_config.store is None:
        data_config = data_config.model_copy(update={"cache_dir": str(cache_dir)})
    tokenizer, resolved = check_data(data_config, base_dir, inputs=False)
    sources = open_sources(data_config, Path(base_dir), tokenizer, resolved,
                           process_count=process_count)
    if source_filter is not None:
        sources = source_filter(sources, tokenizer)
    return Pipeline(
        data_config.model_copy(update={"sources": resolved}),
        sources,
        tokenizer,
        seq_len=seq_len,
        process_index=process_index,
        process_count=process_count,
    )
