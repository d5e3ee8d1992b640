"""`palm status`: the summary of a run from its metrics file."""

import json

from palm_platform.status import main, summarize


def records():
    steps = [{"kind": "step", "step": s, "time": 100.0 + s, "loss": 5.0 - s / 10, "tokens": 10, "step_s": 0.5}
             for s in (1, 2, 3, 2, 3, 4)]  # steps 2-3 replayed after a rollback
    return [
        {"kind": "start", "step": 0, "time": 100.0},
        *steps[:3],
        {"kind": "spike", "step": 3, "time": 104.0, "loss": 9.0},
        {"kind": "rollback", "step": 3, "time": 104.0, "to_step": 1},
        {"kind": "skip", "step": 3, "time": 104.0, "batches": 5},
        {"kind": "restart", "step": 1, "time": 104.5},
        *steps[3:],
        {"kind": "checkpoint_saved", "step": 4, "time": 105.0},
        {"kind": "goodput", "step": 4, "time": 106.0, "wall_s": 12.0, "productive_s": 3.0, "goodput": 0.25},
    ]


def test_summary_counts_each_step_once_and_every_event():
    summary = summarize(records(), total_steps=4)
    assert summary.steps == 4 and summary.tokens == 40
    assert (summary.restarts, summary.rollbacks, summary.skipped_batches, summary.checkpoints) == (1, 1, 5, 1)
    assert summary.final_loss == 5.0 - 4 / 10
    assert summary.goodput == 0.25 and summary.wall_s == 12.0  # the run's own accounting


def test_status_command_prints_the_summary_and_the_spikes(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records()) + "\n{torn")
    assert main(type("Args", (), {"run_dir": str(tmp_path)})()) == 0
    out = capsys.readouterr().out
    assert "steps 4" in out and "restarts 1  rollbacks 1  skipped batches 5" in out
    assert "step 3: spike" in out and "step 3: rollback" in out


def test_status_of_a_folder_without_metrics_fails_clearly(tmp_path, capsys):
    assert main(type("Args", (), {"run_dir": str(tmp_path)})()) == 2
    assert "no metrics here" in capsys.readouterr().err
