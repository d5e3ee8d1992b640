"""A run folder's job.json, read by `palm generate` / `palm eval`, is hostile input too: each
bad record is one line on stderr that names the file (and the field), with exit status 2."""

import json
import time
from pathlib import Path

import pytest

from palm_platform.cli import main as palm
from palm_platform.eval.restore import JOB_RECORD, read_job_record
from palm_platform.job import load_job
from palm_platform.job.record import record_job
from tests.support.paths import ROOT


@pytest.fixture
def record(tmp_path) -> Path:
    record_job(tmp_path, load_job(ROOT / "tests" / "jobs" / "eval-tiny.yaml"))
    return tmp_path / JOB_RECORD


def test_a_recorded_job_reads_back_as_the_same_job(record):
    assert read_job_record(record) == load_job(ROOT / "tests" / "jobs" / "eval-tiny.yaml")


def _steps(text: str, value: object) -> str:
    job = json.loads(text)
    job["train"]["steps"] = value
    return json.dumps(job)


HOSTILE = {
    "torn": (lambda text: text[: len(text) // 2], "not a job record"),
    "deep nesting": (lambda text: "[" * 200_000, "maximum recursion depth"),
    "duplicate key": (lambda text: text.replace('{', '{"name": "x", ', 1), "duplicate key 'name'"),
    "not utf-8": (lambda text: text.encode().replace(b'"train"', b'"tr\xffin"'), "utf-8"),
    "wrong type": (lambda text: _steps(text, "sixty"), "field train.steps"),
    "huge value": (lambda text: _steps(text, "9" * 5_000_000), "more than a job record"),
    "a list": (lambda text: "[1, 2]", "must be a YAML mapping"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_job_record_is_one_line_and_exit_2(record, capsys, name):
    change, expected = HOSTILE[name]
    bad = change(record.read_text())
    (record.write_bytes if isinstance(bad, bytes) else record.write_text)(bad)
    start = time.monotonic()
    rc = palm(["generate", str(record.parent), "--prompt", "x"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert str(record) in err and expected in err and "Fix: pass --job" in err, err
    assert len(err) < 500 and elapsed < 2
