"""`palm status`: the summary of a run from its metrics file."""

import json

import pytest

from palm_platform.metrics.events import describe_event
from palm_platform.metrics.status import main, summarize


def records():
    steps = [
        {
            "kind": "step",
            "step": s,
            "time": 100.0 + s,
            "loss": 5.0 - s / 10,
            "tokens": 10,
            "step_s": 0.5,
        }
        for s in (1, 2, 3, 2, 3, 4)
    ]  # steps 2-3 replayed after a rollback
    return [
        {"kind": "start", "step": 0, "time": 100.0},
        *steps[:3],
        {"kind": "spike", "step": 3, "time": 104.0, "loss": 9.0},
        {"kind": "rollback", "step": 3, "time": 104.0, "to_step": 1},
        {"kind": "skip", "step": 3, "time": 104.0, "batches": 5},
        {"kind": "restart", "step": 1, "time": 104.5},
        {"kind": "checkpoint_restored", "step": 1, "time": 104.4, "attempt": 1,
         "tier": "persistent", "bytes_persistent": 6_800_000, "newer_ram_step": 2,
         "why_not_ram": "RAM step 2 was incomplete (host 1 (pod-0-w1) lacks its blocks of "
                        "step 2; no peer holds them)"},
        *steps[3:],
        {"kind": "checkpoint_saved", "step": 4, "time": 105.0},
        {
            "kind": "goodput",
            "step": 4,
            "time": 106.0,
            "wall_s": 12.0,
            "productive_s": 3.0,
            "goodput": 0.25,
        },
    ]


def test_summary_counts_each_step_once_and_every_event():
    summary = summarize(records(), total_steps=4)
    assert summary.steps == 4 and summary.tokens == 40
    assert (summary.restarts, summary.rollbacks, summary.skipped_batches, summary.checkpoints) == (
        1,
        1,
        5,
        1,
    )
    assert summary.final_loss == 5.0 - 4 / 10
    assert summary.goodput == 0.25 and summary.wall_s == 12.0  # the run's own accounting


def test_status_command_prints_the_summary_and_the_spikes(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records()) + "\n{torn")
    assert main(type("Args", (), {"run_dir": str(tmp_path)})()) == 0
    out = capsys.readouterr().out
    assert "steps 4" in out and "restarts 1  rollbacks 1  skipped batches 5" in out
    assert "step 3: loss spike" in out and "step 3: rolled back to the checkpoint of step 1" in out
    assert "step 3: skipped 5 batches" in out and "step 1: worker group restarted" in out
    assert ("step 1: restored the checkpoint (attempt 1) from persistent storage (local 0.0 MB, "
            "peer 0.0 MB, persistent 6.8 MB): RAM step 2 was incomplete (host 1 (pod-0-w1) "
            "lacks its blocks of step 2; no peer holds them)") in out


def test_events_read_as_sentences_with_rounded_numbers():
    spike = {
        "kind": "spike",
        "step": 45,
        "time": 1.0,
        "loss": 9.123456789012345,
        "limit": 6.5012345678,
    }
    rollback = {"kind": "rollback", "step": 45, "time": 1.0, "to_step": 35, "note": ""}
    compiled = {"kind": "compiled", "step": 1, "time": 1.0, "batch_size": 16, "seconds": 12.345678,
                "cache_hits": 3, "cache_misses": 0}
    saved = {"kind": "checkpoint_saved", "step": 10, "time": 1.0, "blocked_s": 0.0123456789}
    lines = [describe_event(r) for r in (spike, rollback, compiled, saved)]
    assert lines[0] == "step 45: loss spike (9.123)"
    assert lines[1] == "step 45: rolled back to the checkpoint of step 35"  # no empty note
    assert lines[2] == ("step 1: compiled the step for batch 16 in 12.35 s; compilation cache: "
                        "3 hits, 0 misses")
    assert lines[3] == "step 10: checkpoint saved (the loop waited 0.01 s)"


def test_mfu_line_says_a_tiny_model_is_overhead_bound():
    steps = [
        {
            "kind": "step",
            "step": s,
            "time": 100.0 + s,
            "loss": 5.0,
            "tokens": 10,
            "step_s": 0.2,
            "mfu": mfu,
            "compiled": s == 1,
        }
        for s, mfu in ((1, 0.0001), (2, 0.006), (3, 0.006))
    ]
    tiny = summarize(steps).mfu_line()
    assert (
        tiny.startswith("MFU 0.6% at 200 ms per step (overhead-bound") and "1.2 ms at peak" in tiny
    )
    big = summarize([{**r, "mfu": 0.45} for r in steps]).mfu_line()
    assert big == "MFU 45.0% at 200 ms per step"


def test_mfu_leaves_out_the_steps_a_profiler_traced_and_the_one_that_wrote_the_traces():
    def step(s, step_s):
        return {"kind": "step", "step": s, "time": 100.0 + s, "loss": 5.0, "tokens": 10,
                "step_s": step_s, "mfu": 0.1 * 0.2 / step_s, "compiled": False}

    steps = [step(s, 0.2) for s in range(1, 5)] + [step(5, 0.3), step(6, 0.3), step(7, 6.0)]
    profile = {"kind": "profile", "step": 5, "time": 104.5, "last_step": 6}
    assert summarize(steps + [profile]).step_s == pytest.approx(0.2)
    assert summarize(steps).step_s > 0.2  # without the event they would count


def test_status_of_a_folder_without_metrics_fails_clearly(tmp_path, capsys):
    assert main(type("Args", (), {"run_dir": str(tmp_path)})()) == 2
    assert "no metrics here" in capsys.readouterr().err


def test_foreign_lines_in_the_metrics_file_are_skipped_not_a_traceback(tmp_path, capsys):
    foreign = ["[1, 2]", '"text"', '{"kind": "step"}', '{"step": 3, "time": 1.0}',
               '{"kind": "step", "step": "4", "time": 1.0}', "[" * 100_000]
    lines = [json.dumps(r) for r in records()] + foreign
    (tmp_path / "metrics.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe{\n")
    assert main(type("Args", (), {"run_dir": str(tmp_path)})()) == 0
    out = capsys.readouterr().out
    assert "steps 4" in out and "restarts 1  rollbacks 1  skipped batches 5" in out
