"""`palm data sample`: step S's rows as process P reads them, from the store, building nothing;
the run's skip ranges (its ledger) and held-out split are the trainer's."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from palm_platform.commands.data_sample import sample
from palm_platform.data.heldout_split import split_sources
from palm_platform.data.pipeline import build_pipeline
from palm_platform.data.prepare import prepare_store
from palm_platform.job import load_job
from palm_platform.supervise.ledger import Ledger

PALM = Path(sys.executable).parent / "palm"
SCHEDULE = [{"sequences": 4, "until_step": 3}, {"sequences": 8}]


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "sampled", "model": {"preset": "palm-tiny"},
        "topology": {"pods": 1, "hosts_per_pod": 2, "chips_per_host": 4,
                     "ici_topology": "2x2x2", "local": True},
        "mesh": {"model": 2}, "train": {"steps": 20, "seq_len": 32, "batch_schedule": SCHEDULE},
        "checkpoint": {"directory": "ckpt"}, "data": {"store": "store"},
        "eval": {"every_steps": 10, "sequences": 4}, "run_dir": "runs",
    }))
    return path


def _trainer_rows(job, step: int, process: int, skips=()) -> np.ndarray:
    """What the trainer's pipeline reads at `step`: every batch before it, then this one."""
    def split(sources, tokenizer):
        return split_sources(sources, tokenizer.eos_id, job.eval.heldout_fraction,
                             job.eval.split_seed, None).train

    pipeline = build_pipeline(job.data, seq_len=job.seq_len, base_dir=Path.cwd(),
                              process_index=process, process_count=2, source_filter=split)
    for start, end in skips:
        pipeline.add_skip_range(start, end)
    for s in range(step):
        pipeline.local_batch(job.train.batch_size_at(s))
    return pipeline.local_batch(job.train.batch_size_at(step))


def test_without_a_store_it_exits_2_with_the_prepare_command_and_builds_nothing(job_file):
    out = subprocess.run([PALM, "data", "sample", str(job_file), "--step", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert f"palm data prepare {job_file}" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (job_file.parent / "store").exists()


def test_the_rows_are_the_trainers_rows_of_that_step_and_process(job_file):
    job = load_job(job_file)
    prepare_store(job.data, job_file.parent, in_process=True, progress=False)
    lines = sample(job, str(job_file), step=5, process=1, rows=None)
    assert "no skip ranges" in lines[0] and "process 1 of 2 reads rows 4..7" in lines[0]
    texts = [line for line in lines[1:] if not line.startswith("--- row")]
    tokenizer = build_pipeline(job.data, seq_len=32, base_dir=Path.cwd(), process_index=0,
                               process_count=1).tokenizer
    assert texts == [tokenizer.decode(r) for r in _trainer_rows(job, 5, 1)]
    out = subprocess.run([PALM, "data", "sample", str(job_file), "--step", "5", "--process",
                          "1", "--rows", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # The command prints the same header and the first two rows.
    assert out.stdout == "\n".join(sample(job, str(job_file), 5, 1, 2)) + "\n"
    assert "\n".join(lines).startswith(out.stdout.rstrip("\n"))


def test_the_runs_skip_ranges_move_the_rows_and_before_rollbacks_shows_the_spike(job_file):
    job = load_job(job_file)
    prepare_store(job.data, job_file.parent, in_process=True, progress=False)
    run_dir = Path(job.run_dir) / job.name
    ledger = Ledger()
    ledger.record_skip(20, 36, step=6, batches=2)  # a spike at step 6 skipped [20, 36)
    ledger.save(run_dir / "ledger.json")
    tokenizer = build_pipeline(job.data, seq_len=32, base_dir=Path.cwd(), process_index=0,
                               process_count=1).tokenizer

    def texts(lines):
        return [line for line in lines[1:] if not line.startswith("--- row")]

    final = sample(job, str(job_file), step=6, process=0, rows=None)
    assert "1 skip range(s) of the run" in final[0]
    assert texts(final) == [tokenizer.decode(r) for r in _trainer_rows(job, 6, 0, [(20, 36)])]
    at_spike = sample(job, str(job_file), step=6, process=0, rows=None, before_rollbacks=True)
    assert texts(at_spike) == [tokenizer.decode(r) for r in _trainer_rows(job, 6, 0)]
    assert texts(at_spike) != texts(final)
