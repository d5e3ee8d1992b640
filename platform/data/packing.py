"""Packing: fixed-length training sequences cut from a source's flat token array.

The flat array is every document followed by the end-of-document (EOS) token (a source of
the token store, store.SourceTokens). Sequence i is the window tokens[i*L : i*L + L + 1] for
sequence length L: inputs are window[:-1], targets window[1:]. Windows overlap by one token
so that every token transition is trained exactly once (with non-overlapping L+1 windows,
one transition per sequence would never be a target). No padding: a document continues into
the next window, and a window may hold the end of one document, EOS, and the start of the
next.

Attention may cross document boundaries inside a window, as in PaLM (and GPT-3, T5's
decoder-only pretraining): the EOS token tells the model that a new document starts, no
segment ids or attention reset are used, and the model needs no packing-aware masking.

This is a random-access source (`len` and `[i]`), which Grain's MapDataset wraps; Grain's
own packing transforms work on iterators, where the position in the data would be a
stateful stream instead of index arithmetic.
"""

from __future__ import annotations

import numpy as np


class PackedSequences:
    """Random-access view of a flat token array as windows of seq_len + 1 tokens."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self._tokens = tokens
        self._seq_len = seq_len
        self._length = max(0, (len(tokens) - 1) // seq_len)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._length:
            raise IndexError(f"sequence {index} out of range [0, {self._length})")
        start = index * self._seq_len
        return self._tokens[start : start + self._seq_len + 1]


class PackedWindows:
    """The same windows as PackedSequences, as (tokens, start, stop) descriptors to read.

    The pipeline's index arithmetic (Grain's shuffle, mixture and window shuffle) runs on
    these; the pipeline then reads a whole batch's windows at once (store_sources.py's
    read_windows: concurrent reads from the token store) instead of one row at a time.
    """

    def __init__(self, tokens, seq_len: int):
        self._packed = PackedSequences(tokens, seq_len)
        self._tokens, self._seq_len = tokens, seq_len

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, index: int) -> tuple:
        if not 0 <= index < len(self._packed):
            raise IndexError(f"sequence {index} out of range [0, {len(self._packed)})")
        start = index * self._seq_len
        return self._tokens, start, start + self._seq_len + 1
