"""Sources: every format reads, bad records are counted and skipped, bad paths fail fast."""

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic
import pytest

from palm_platform.data import (
    PALM_MIXTURE,
    DataConfig,
    DataConfigError,
    SourceConfig,
    build_pipeline,
    palm_mixture_sources,
)
from palm_platform.data.readers import ReadStats, iter_documents


def _read(path: Path, fmt: str = "auto", text_field: str = "text"):
    stats = ReadStats()
    return list(iter_documents(str(path), fmt, text_field, stats)), stats


def test_jsonl_bad_records_are_counted_logged_and_the_rest_kept(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"text": "first"}\n'
        b'{"text": "bad \xff\xfe utf8"}\n'
        b"this is not json\n"
        b'{"body": "no text field"}\n'
        b'{"text": ""}\n'
        b"\n"
        b'{"text": "last"}\n'
    )
    with caplog.at_level(logging.WARNING):
        documents, stats = _read(path)
    assert documents == ["first", "last"]
    assert dict(stats.bad) == {
        "bad_utf8": 1, "bad_json": 1, "missing_field": 1, "empty_document": 1,
    }  # fmt: skip
    assert f"{path}:2:" in caplog.text and f"{path}:3:" in caplog.text
    assert f"{path}:4:" in caplog.text


def test_empty_file_is_counted_not_an_error(tmp_path):
    for name in ("empty.jsonl", "empty.txt"):
        (tmp_path / name).write_bytes(b"")
        documents, stats = _read(tmp_path / name)
        assert documents == [] and stats.bad["empty_file"] == 1


def test_text_file_is_one_document_and_bad_utf8_lines_are_dropped(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes(b"line one\n  indented\n\xff broken line\nlast line\n")
    documents, stats = _read(path)
    assert documents == ["line one\n  indented\nlast line\n"]
    assert stats.bad["bad_utf8"] == 1


def test_parquet_reads_the_text_column_and_counts_nulls(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["alpha", None, "gamma"], "id": [1, 2, 3]}), path)
    documents, stats = _read(path, text_field="content")
    assert documents == ["alpha", "gamma"]
    assert stats.bad["missing_field"] == 1


def test_parquet_without_the_column_is_counted_and_skipped(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["alpha"]}), path)
    documents, stats = _read(path)
    assert documents == [] and stats.bad["missing_field"] == 1


@pytest.mark.parametrize("source", [
    {"name": "web", "paths": ["web-00000.arrayrecord"], "weight": 1},
    {"name": "web", "paths": ["web.jsonl"], "format": "arrayrecord", "weight": 1}])
def test_an_arrayrecord_source_is_one_clear_error_naming_the_fix(source):
    with pytest.raises(pydantic.ValidationError) as error:
        DataConfig(sources=[source])
    (problem,) = error.value.errors()
    assert problem["loc"][:3] == ("sources", 0, "paths" if "format" not in source else "format")
    assert "ArrayRecord sources were removed" in problem["msg"]
    assert "palm data prepare JOB.yaml" in problem["msg"]


def test_pipeline_counts_bad_records_in_stats(tmp_path):
    path = tmp_path / "a.jsonl"
    good = [json.dumps({"text": f"document number {i} " * 5}) for i in range(40)]
    path.write_text("\n".join([*good[:20], "{oops", *good[20:]]) + "\n")
    config = DataConfig(sources=[SourceConfig(name="a", paths=["a.jsonl"], weight=1.0)])
    pipeline = build_pipeline(
        config, seq_len=16, base_dir=tmp_path, process_index=0, process_count=1,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    stats = pipeline.stats()
    assert stats["bad_records"] == 1
    assert stats["sources"]["a"]["documents"] == 40
    assert stats["sources"]["a"]["bad"]["bad_json"] == 1


def test_missing_path_fails_fast_naming_the_field_and_path(tmp_path):
    (tmp_path / "real.jsonl").write_text('{"text": "x"}\n')
    config = DataConfig(
        sources=[
            SourceConfig(name="ok", paths=["real.jsonl"], weight=1.0),
            SourceConfig(name="web", paths=["real.jsonl", "../nowhere/web-*.jsonl"], weight=1.0),
        ]
    )
    with pytest.raises(DataConfigError) as error:
        build_pipeline(
            config, seq_len=8, base_dir=tmp_path, process_index=0, process_count=1,
            cache_dir=tmp_path / "cache",
        )  # fmt: skip
    assert error.value.field == "data.sources[1].paths[1]"
    assert "nowhere/web-*.jsonl" in str(error.value) and "'web'" in str(error.value)
    assert not (tmp_path / "cache").exists()  # failed before tokenising anything


def test_missing_tokenizer_fails_naming_the_field(tmp_path):
    config = DataConfig(tokenizer="../data/absent.model")
    with pytest.raises(DataConfigError, match=r"^data\.tokenizer: .*absent\.model"):
        build_pipeline(config, seq_len=8, base_dir=tmp_path, process_index=0, process_count=1)


def test_relative_paths_resolve_against_the_base_dir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i} " * 8}) for i in range(20))
    )
    config = DataConfig(sources=[SourceConfig(name="a", paths=["../data/a.jsonl"], weight=1)])
    pipeline = build_pipeline(
        config, seq_len=8, base_dir=tmp_path / "jobs", process_index=0, process_count=1,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert pipeline.local_batch(2).shape == (2, 9)


def test_config_rejects_unknown_fields_and_duplicate_names():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        SourceConfig(name="a", paths=["x"], weight=1.0, wieght=2.0)
    with pytest.raises(pydantic.ValidationError, match="unique"):
        DataConfig(sources=[SourceConfig(name="a", paths=["x"], weight=1.0)] * 2)
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        SourceConfig(name="a", paths=["x"], weight=0.0)


def test_palm_mixture_is_table_2_of_the_paper():
    assert PALM_MIXTURE == {
        "social_media_conversations": 0.50, "filtered_webpages": 0.27, "books": 0.13,
        "github": 0.05, "wikipedia": 0.04, "news": 0.01,
    }  # fmt: skip
    assert np.isclose(sum(PALM_MIXTURE.values()), 1.0)
    sources = palm_mixture_sources({name: [f"gs://bucket/{name}/*"] for name in PALM_MIXTURE})
    assert [s.weight for s in sources] == list(PALM_MIXTURE.values())
