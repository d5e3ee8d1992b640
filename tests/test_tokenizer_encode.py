"""`palm tokenizer encode`: a corpus tokenised once into a shard the pipeline reads as is."""

import json

import numpy as np

from palm_platform.cli import main
from palm_platform.data.readers import ReadStats, iter_documents
from palm_platform.data.tokenizer import load_tokenizer

TEXTS = ["def f(x):\n    return 42", "PaLM uses SwiGLU.", "ünïcödé and   spaces"]


def test_the_shard_holds_each_documents_token_ids_in_order(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    shard = tmp_path / "docs.arrayrecord"
    assert main(["tokenizer", "encode", "--model", "builtin:default", "--input", str(corpus),
                 "--output", str(shard)]) == 0
    assert "3 documents" in capsys.readouterr().out
    tokenizer = load_tokenizer("builtin:default")
    read = list(iter_documents(str(shard), "auto", "text", ReadStats()))
    assert len(read) == len(TEXTS)
    for tokens, text in zip(read, TEXTS, strict=True):
        np.testing.assert_array_equal(tokens, tokenizer.encode(text))
        assert tokenizer.decode(tokens.tolist()) == text
    # no partial left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.arrayrecord", "docs.jsonl"]


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(json.dumps({"text": "x"}) + "\n")
    missing = ["tokenizer", "encode", "--model", "builtin:default", "--input",
               str(tmp_path / "nothere.jsonl"), "--output", str(tmp_path / "o.arrayrecord")]
    assert main(missing) == 2
    assert "--input" in capsys.readouterr().err
    text_name = ["tokenizer", "encode", "--model", "builtin:default", "--input", str(corpus),
                 "--output", str(tmp_path / "o.bin")]
    assert main(text_name) == 2
    assert "Fix: end it in .arrayrecord" in capsys.readouterr().err
    no_model = ["tokenizer", "encode", "--model", str(tmp_path / "none.model"), "--input",
                str(corpus), "--output", str(tmp_path / "o.arrayrecord")]
    assert main(no_model) == 2
    assert "--model" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))
