"""Held-out eval: whole documents split off by seed and never trained on, the split recorded
in the run folder, loss and bits-per-byte per source logged during training."""

import json

import numpy as np
import pytest

from palm_platform.data.config import DataConfig, SourceConfig
from palm_platform.data.heldout_split import (
    SPLIT_FILE,
    SpanTokens,
    choose_heldout,
    document_ends,
    split_sources,
)
from palm_platform.data.pipeline import Pipeline
from palm_platform.data.store_sources import Source
from palm_platform.data.tokenizer import load_tokenizer
from palm_platform.metrics.sink import read_records
from palm_platform.metrics.status import summarize
from palm_platform.train.heldout import bytes_per_token
from tests.support.eval_runs import shared_run
from tests.support.paths import TEST_JOBS

EOS = 1


def source(name: str, documents: int, length: int = 40, first: int = 10) -> Source:
    """Document d is `length` copies of token first + d, then EOS: a token names its document."""
    tokens = np.concatenate([[first + d] * length + [EOS] for d in range(documents)]).astype(
        np.int32
    )
    return Source(name, tokens, {})


def test_document_ends_are_the_eos_positions():
    np.testing.assert_array_equal(document_ends(np.array([5, 5, 1, 7, 1, 8, 8, 1]), EOS), [2, 4, 7])


def test_span_tokens_read_like_the_concatenated_spans():
    tokens = np.arange(100)
    spans = [(0, 10), (20, 21), (30, 30), (50, 100)]
    view = SpanTokens(tokens, spans)
    whole = np.concatenate([tokens[a:b] for a, b in spans])
    assert len(view) == len(whole) == 61
    for a, b in [(0, 61), (5, 15), (9, 12), (10, 11), (11, 40), (60, 70), (3, 3)]:
        np.testing.assert_array_equal(view[a:b], whole[a:b])


def whole(tokens) -> np.ndarray:
    return tokens[0 : len(tokens)]


def test_the_choice_depends_on_seed_and_count_only_and_never_takes_every_document():
    assert choose_heldout(100, 0.05, 0, "web") == choose_heldout(100, 0.05, 0, "web")
    assert choose_heldout(100, 0.05, 0, "web") != choose_heldout(100, 0.05, 1, "web")
    assert len(choose_heldout(100, 0.05, 0, "web")) == 5
    assert len(choose_heldout(3, 0.01, 0, "x")) == 1 and choose_heldout(1, 0.4, 0, "x") == []


def test_held_out_documents_leave_the_training_tokens_whole():
    split = split_sources([source("a", 40)], EOS, 0.1, seed=3, recorded=None)
    held = split.record["sources"]["a"]["heldout"]
    assert len(held) == 4
    train_docs = set(np.unique(whole(split.train[0].tokens))) - {EOS}
    held_docs = set(np.unique(whole(split.heldout["a"]))) - {EOS}
    assert held_docs == {10 + d for d in held} and not train_docs & held_docs
    assert len(split.train[0].tokens) + len(split.heldout["a"]) == 40 * 41


def test_a_recorded_split_wins_and_a_changed_source_is_an_error():
    recorded = {"sources": {"a": {"documents": 40, "heldout": [0, 39]}}}
    split = split_sources([source("a", 40)], EOS, 0.1, seed=3, recorded=recorded)
    assert set(np.unique(whole(split.heldout["a"]))) - {EOS} == {10, 49}
    with pytest.raises(ValueError, match="'a' has 41 documents.*recorded 40"):
        split_sources([source("a", 41)], EOS, 0.1, seed=3, recorded=recorded)


def test_the_training_pipeline_never_yields_a_held_out_document():
    sources = [source("a", 30), source("b", 20, first=100)]
    split = split_sources(sources, EOS, 0.1, seed=0, recorded=None)
    config = DataConfig(
        sources=[SourceConfig(name=s.name, paths=["x"], weight=1.0) for s in sources]
    )
    pipeline = Pipeline(config, split.train, load_tokenizer("builtin:default"), seq_len=16,
                        process_index=0, process_count=1)
    seen = set(np.unique(pipeline.local_batch(512)))
    held = {first + d for s, first in (("a", 10), ("b", 100))
            for d in split.record["sources"][s]["heldout"]}
    assert held and not seen & held and len(seen) > 30


def test_bytes_per_token_spells_the_text_back():
    tokenizer = load_tokenizer("builtin:default")
    text = "Größe: naïve ☃ code\n\tx = 1"
    table = bytes_per_token(tokenizer)
    assert table[tokenizer.encode(text)].sum() == len(text.encode())
    assert table[tokenizer.eos_id] == 0


@pytest.mark.slow
def test_training_logs_held_out_loss_and_bpb_per_source(tmp_path_factory):
    run_dir, facts = shared_run(tmp_path_factory)
    records = read_records(run_dir)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20]
    for source in ("code", "docs", "multilingual"):
        first, last = evals[0][f"eval/{source}/loss"], evals[-1][f"eval/{source}/loss"]
        assert 0 < last < first and 0 < evals[-1][f"eval/{source}/bpb"] < 10
    assert facts["eval_compiles"] == 1  # every source and every eval: one compiled function
    goodput = next(r for r in records if r["kind"] == "goodput")
    assert goodput["badput_eval_s"] > 0
    assert "held-out eval at step 20: code loss" in "\n".join(summarize(records).lines())
    recorded = json.loads((run_dir / SPLIT_FILE).read_text())
    assert all(recorded["sources"][s]["heldout"] for s in ("code", "docs", "multilingual"))


def test_a_bad_eval_section_names_the_field(tmp_path):
    import yaml

    from palm_platform.job import JobError, load_job

    raw = yaml.safe_load((TEST_JOBS / "eval-tiny.yaml").read_text())
    raw["eval"] = {"every_steps": 0}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(JobError, match=r"field eval.every_steps: .*greater than or equal to 1"):
        load_job(tmp_path / "job.yaml")
    raw["eval"] = {"every_steps": 5, "batch": 8}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(JobError, match=r"field eval.batch: .*Fix: remove it"):
        load_job(tmp_path / "job.yaml")


def test_palm_status_shows_the_latest_held_out_eval():
    records = [
        {"kind": "step", "step": 1, "time": 0.0, "loss": 7.0, "tokens": 10, "step_s": 1.0},
        {"kind": "eval", "step": 1, "time": 1.0, "eval/code/loss": 6.5, "eval/code/bpb": 3.21},
        {"kind": "eval", "step": 2, "time": 2.0, "eval/code/loss": 5.25, "eval/code/bpb": 2.5,
         "eval/web/loss": 4.0, "eval/web/bpb": 1.125},
    ]
    lines = summarize(records).lines()
    assert (
        lines[-1] == "held-out eval at step 2: code loss 5.250 bpb 2.500, web loss 4.000 bpb 1.125"
    )
    assert not any("held-out" in line for line in summarize(records[:1]).lines())
