"""Data quality reaches the operator: bad-record counts and locations, a document-length
limit, and a source tokenised once per machine however many workers ask for it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from palm_platform.data import DataConfig, SourceConfig, build_pipeline
from palm_platform.data.quality import describe, quality_event
from palm_platform.metrics.sink import MetricsSink
from palm_platform.metrics.status import print_summary


def pipeline_for(tmp_path, **data) -> dict:
    config = DataConfig(sources=[SourceConfig(name="web", paths=["web.jsonl"], weight=1.0)], **data)
    return build_pipeline(config, seq_len=16, base_dir=tmp_path, process_index=0,
                          process_count=1, cache_dir=tmp_path / "cache").stats()


@pytest.fixture
def web(tmp_path) -> Path:
    docs = [json.dumps({"text": f"a normal document number {i}. " * 4}) for i in range(30)]
    docs.insert(10, "{broken")
    docs.insert(20, json.dumps({"text": "huge " * 40_000}))  # 200,000 characters
    path = tmp_path / "web.jsonl"
    path.write_text("\n".join(docs) + "\n")
    return path


def test_a_document_over_the_limit_is_dropped_and_counted_with_its_line(tmp_path, web):
    stats = pipeline_for(tmp_path, max_document_chars=100_000)
    web_stats = stats["sources"]["web"]
    assert web_stats["bad"]["too_long"] == 1 and web_stats["bad"]["bad_json"] == 1
    assert stats["first_bad"] == [f"{web}:11 bad_json", f"{web}:21 too_long"]
    assert web_stats["tokens"] < 2_000  # 30 short documents; the 200k-character one is gone


def test_split_keeps_a_long_document_in_pieces(tmp_path, web):
    dropped = pipeline_for(tmp_path, max_document_chars=100_000)["sources"]["web"]["tokens"]
    split = pipeline_for(tmp_path, max_document_chars=100_000, long_documents="split")
    assert split["sources"]["web"]["bad"]["too_long"] == 1
    assert split["sources"]["web"]["tokens"] > dropped + 10_000


def test_the_default_limit_keeps_ordinary_long_documents(tmp_path, web):
    stats = pipeline_for(tmp_path)  # 1M characters by default
    assert stats["sources"]["web"]["bad"]["too_long"] == 0


def test_bad_records_reach_metrics_the_summary_and_palm_status(tmp_path, web, capsys):
    event = quality_event(pipeline_for(tmp_path, max_document_chars=100_000))
    sink = MetricsSink(tmp_path / "run", job_name="j", config={}, enabled=True,
                       wandb_project=None, wandb_mode="disabled")
    sink.event("data_quality", 0, **event)
    sink.log(1, {"loss": 3.0, "tokens": 16, "step_s": 0.1})
    sink.close()
    print_summary(tmp_path / "run")
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "bad records" in x)
    assert "data: 2 bad records of 31 documents (web: bad_json 1, too_long 1)" in line
    assert f"{web}:11 bad_json" in line
    assert describe({"bad_records": 0, "documents": 5}) == "data: 5 documents, no bad records"


TOKENISE = """
import logging, sys
from pathlib import Path
from palm_platform.data import DataConfig, SourceConfig, build_pipeline
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", force=True)
config = DataConfig(sources=[SourceConfig(name="big", paths=["big.jsonl"], weight=1.0)])
build_pipeline(config, seq_len=16, base_dir=Path(sys.argv[1]), process_index=int(sys.argv[2]),
               process_count=2, cache_dir=Path(sys.argv[1]) / "cache")
"""


@pytest.mark.multiprocess
def test_two_workers_on_one_machine_tokenise_a_source_once(tmp_path):
    lines = [json.dumps({"text": f"line {i} of a larger source, with some words. " * 20})
             for i in range(6_000)]
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    workers = [subprocess.Popen([sys.executable, "-c", TOKENISE, str(tmp_path), str(i)],
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    logs = [w.communicate(timeout=300)[1] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    built = sum(log.count("prepared token store") for log in logs)  # one, under its lock
    assert built == 1, logs


def test_a_record_nested_past_the_recursion_limit_is_a_bad_record(tmp_path):
    path = tmp_path / "web.jsonl"
    good = json.dumps({"text": "a normal document. " * 4})
    path.write_text("\n".join([good, "[" * 200_000, good]) + "\n")
    stats = pipeline_for(tmp_path)
    assert stats["sources"]["web"]["bad"]["bad_json"] == 1
    assert stats["first_bad"] == [f"{path}:2 bad_json"]
