"""State files in the run folder that the train loop reads when it (re)starts: a torn or
edited one is reported in one line and never keeps a run from resuming."""

import logging

import pytest

from palm_platform.job import load_job
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"


@pytest.mark.parametrize("text", ['{"wall_s": 12.5, "productive_s"', "[" * 100_000,
                                  '{"wall_s": "x" , "productive_s": 1, "badput_s": {}}'])
def test_an_unreadable_goodput_file_is_one_warning_not_a_failed_start(tmp_path, caplog, text):
    job = load_job(JOB)
    job = job.model_copy(update={"checkpoint": job.checkpoint.model_copy(
        update={"directory": str(tmp_path / "ckpt")})})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "goodput.json").write_text(text)  # a kill while it was written, or an edit
    with caplog.at_level(logging.WARNING, logger="palm"):
        trainer = Trainer(job, run_dir)
        trainer.close()
    warned = [r.getMessage() for r in caplog.records if "goodput.json" in r.getMessage()]
    assert len(warned) == 1 and "unreadable" in warned[0] and len(warned[0]) <= 300, warned
