"""The tokenizer is lossless for any text, PaLM-style; `palm tokenizer train` writes a model."""

import random
import subprocess
import sys

import pytest

from palm_platform.data import load_tokenizer, train_tokenizer

# Pools of characters a training corpus may never have seen: scripts, emoji, combining
# marks, controls, whitespace of every kind, SentencePiece's own meta symbol U+2581.
_POOLS = [
    " \t\n\r\x0b\x0c\u00a0\u3000\u2028",
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "(){}[]<>:;.,!?'\"`~@#$%^&*-_=+/\\|",
    "äöüßéèçñøåłżœ",
    "".join(map(chr, range(0x0400, 0x0450))),  # Cyrillic
    "".join(map(chr, range(0x0600, 0x0650))),  # Arabic
    "".join(map(chr, range(0x0900, 0x0950))),  # Devanagari
    "".join(map(chr, range(0x1200, 0x1240))),  # Ethiopic, not in the corpus
    "".join(map(chr, range(0x4E00, 0x4E80))),  # CJK
    "".join(map(chr, range(0xAC00, 0xAC40))),  # Hangul
    "😀🎉🚀👍🏽👨‍👩‍👧🇩🇪",
    "\u0301\u0308\u200b\u200d\ufeff\ue000\U0001d11e\x00\x7f\u2581▁▁",
]


def _random_text(rng: random.Random) -> str:
    length = rng.randint(0, 40)
    return "".join(rng.choice(rng.choice(_POOLS)) for _ in range(length))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin:default")


def test_decode_encode_is_identity_for_random_unicode_strings(tokenizer):
    rng = random.Random(1234)
    texts = [_random_text(rng) for _ in range(2000)]
    failures = [t for t in texts if tokenizer.decode(tokenizer.encode(t)) != t]
    assert failures == []
    batch = tokenizer.encode_batch(texts)
    assert [tokenizer.decode(ids) for ids in batch] == texts


@pytest.mark.parametrize(
    "text",
    [
        "  two  spaces   three\n\n\nnewlines\ttab\t\tend  ",
        " leading space",
        "trailing newline\n",
        "\u2581literal meta space\u2581\u2581",
        "def f(x):\n    return x  # comment\n",
        "",
    ],
)
def test_whitespace_is_preserved_exactly(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_digits_are_split_into_single_digit_tokens(tokenizer):
    pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode("x 2048 y")]
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == ["2", "0", "4", "8"]


def test_unseen_script_uses_byte_pieces_not_unknown(tokenizer):
    ids = tokenizer.encode("ሰላም")  # Amharic: not in the bundled corpus
    assert 2 not in ids  # unk id
    assert all(tokenizer.id_to_piece(i).startswith("<0x") for i in ids)


def test_bundled_tokenizer_ids(tokenizer):
    assert (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id) == (1024, 1, 0)


def test_missing_tokenizer_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        load_tokenizer(str(tmp_path / "nope.model"))


def test_trained_tokenizer_is_lossless(tmp_path):
    docs = ["The quick brown fox jumps over the lazy dog.\n  Indented 123 line\n"] * 50
    model = train_tokenizer(docs, tmp_path / "tiny", 300, model_type="bpe", num_threads=1)
    tokenizer = load_tokenizer(str(model))
    rng = random.Random(7)
    for text in [_random_text(rng) for _ in range(300)]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_palm_tokenizer_train_cli_writes_model(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("hello world, hello tokens 42\n\tsecond line\n" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "palm_platform.cli", "tokenizer", "train",
         "--input", str(corpus), "--vocab-size", "280", "--model-type", "bpe",
         "--output", str(tmp_path / "out" / "tok")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tokenizer = load_tokenizer(str(tmp_path / "out" / "tok.model"))
    assert tokenizer.vocab_size == 280
    assert tokenizer.decode(tokenizer.encode("héllo  wörld\n")) == "héllo  wörld\n"


def test_palm_tokenizer_train_cli_names_missing_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "palm_platform.cli", "tokenizer", "train",
         "--input", str(tmp_path / "absent.txt"), "--vocab-size", "280",
         "--output", str(tmp_path / "tok")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "absent.txt" in result.stderr
