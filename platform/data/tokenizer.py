"""SentencePiece tokenizers trained and used the PaLM way: lossless for any text.

PaLM's vocabulary (256k pieces) is lossless: whitespace is kept exactly (runs of spaces,
tabs, newlines), out-of-vocabulary characters fall back to UTF-8 byte pieces, and digits are
split into single-digit pieces. In SentencePiece terms: `normalization_rule_name=identity`
(no NFKC, which would rewrite characters), `remove_extra_whitespaces=False`,
`add_dummy_prefix=False` (no invented leading space), `allow_whitespace_only_pieces=True`
(indentation runs become pieces), `byte_fallback=True`, `split_digits=True`, and "\\n" and
"\\t" as user-defined pieces (the trainer reads line by line, so it never sees a newline).

One gap in SentencePiece itself is closed here by hand: it writes spaces as the meta symbol
U+2581 and decodes every U+2581 back to a space, so a literal U+2581 in the input would
come back as a space. `Tokenizer.encode` spells a literal U+2581 with its three byte pieces,
which decode to the character itself.

Ids: pad 0, end-of-document (EOS) 1, unk 2 (never produced: byte fallback), no BOS.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import fsspec
import numpy as np
import sentencepiece as spm

from palm_platform.data import corpus
from palm_platform.data.config import BUILTIN_TOKENIZER

log = logging.getLogger(__name__)

_META_SPACE = "\u2581"
_MAX_SENTENCE_CHARS = 4096  # the trainer drops longer sentences; long lines are cut instead

PALM_TRAINER_OPTIONS = dict(
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    split_digits=True,
    byte_fallback=True,
    user_defined_symbols=["\n", "\t"],
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=0.9995,
    max_sentence_length=4 * _MAX_SENTENCE_CHARS,  # bytes; UTF-8 takes at most 4 per char
)


class Tokenizer:
    """A loaded SentencePiece model with lossless encode/decode."""

    def __init__(self, model_proto: bytes, path: str):
        self.path = path
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size: int = self._sp.vocab_size()
        self.eos_id: int = self._sp.eos_id()
        self.pad_id: int = self._sp.pad_id()
        if self.eos_id < 0:
            raise ValueError(f"{path}: the tokenizer has no end-of-document (eos) piece")
        byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()]
        if any(
            self._sp.id_to_piece(i) != f"<0x{b:02X}>"
            for i, b in zip(byte_ids, _META_SPACE.encode(), strict=True)
        ):
            byte_ids = []  # a model without byte fallback cannot spell U+2581 losslessly
        self._meta_space_ids = byte_ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no EOS added); decode(encode(text)) == text."""
        if _META_SPACE not in text or not self._meta_space_ids:
            return self._sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(_META_SPACE)):
            if i:
                ids.extend(self._meta_space_ids)
            if part:
                ids.extend(self._sp.encode(part))
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """encode() of many texts; SentencePiece's batch call saves Python overhead."""
        plain = [i for i, t in enumerate(texts) if _META_SPACE not in t]
        out: list[list[int]] = [[] for _ in texts]
        if plain:
            encoded = self._sp.encode([texts[i] for i in plain], num_threads=num_threads)
            for i, ids in zip(plain, encoded, strict=True):
                out[i] = ids
        for i, t in enumerate(texts):
            if _META_SPACE in t:
                out[i] = self.encode(t)
        return out

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids; the EOS and pad pieces decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))


def read_model(spec: str) -> tuple[bytes, str]:
    """The model's bytes and its path: what a worker on another machine is sent (prepare.py
    ships bytes through Ray rather than a path that machine may not have)."""
    if spec == BUILTIN_TOKENIZER:
        spec = str(corpus.TOKENIZER_PATH)
    elif spec.startswith("builtin:"):
        raise FileNotFoundError(f"unknown builtin tokenizer {spec!r}; use {BUILTIN_TOKENIZER!r}")
    try:
        with fsspec.open(spec, "rb") as f:
            return f.read(), spec
    except FileNotFoundError as e:
        raise FileNotFoundError(f"tokenizer model {spec} does not exist") from e


def load_tokenizer(spec: str) -> Tokenizer:
    """Load a .model file (local path or fsspec URL), or the bundled `builtin:default`."""
    proto, spec = read_model(spec)
    try:
        return Tokenizer(proto, spec)
    except RuntimeError as e:
        raise ValueError(f"{spec} is not a SentencePiece model: {e}") from e


def _training_sentences(documents: Iterable[str]) -> Iterator[str]:
    """Lines of the documents, cut to the trainer's maximum sentence length."""
    for document in documents:
        for line in document.split("\n"):
            for start in range(0, len(line), _MAX_SENTENCE_CHARS):
                yield line[start : start + _MAX_SENTENCE_CHARS]


def train_tokenizer(
    documents: Iterable[str],
    output_prefix: str | Path,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    max_sentences: int = 10_000_000,
    num_threads: int | None = None,
    seed: int = 0,
) -> Path:
    """Train a lossless SentencePiece model on documents; writes and returns PREFIX.model.

    With one thread and a fixed seed the model is the same byte for byte on every run.
    """
    output_prefix = Path(output_prefix)
    spm.set_random_generator_seed(seed)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(documents),
            model_prefix=str(output_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
            **PALM_TRAINER_OPTIONS,
        )
    except RuntimeError as e:
        raise ValueError(
            f"SentencePiece training of {output_prefix}.model failed: {e}. Fix: give more "
            f"text or a smaller vocab size (asked for {vocab_size})."
        ) from e
    model_path = output_prefix.with_name(output_prefix.name + ".model")
    log.info("wrote %s (vocab %d, %s)", model_path, vocab_size, model_type)
    return model_path
