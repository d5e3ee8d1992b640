"""Ledger: JSON round trip, skip ranges, counts, merge, atomic save."""

import json
import math

import pytest

from palm_platform.supervise.config import SpikeConfig
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.rollback import plan_rollback
from palm_platform.supervise.spike import Spike, SpikeDetector


def _handled_spike_ledger():
    ledger = Ledger()
    spike = Spike(step=412, loss=9.81, rule="ratio", limit=9.3, median=3.10, scale=3.0,
                  factor=3.0)
    plan = plan_rollback(spike, [100, 200, 300], SpikeConfig(), ledger,
                         data_state={"next_sequence": 13184}, batch_size=32)
    plan.record(ledger)
    return ledger


def test_json_round_trip_is_strict_json_and_lossless():
    ledger = _handled_spike_ledger()
    ledger.record_spike(SpikeDetector(SpikeConfig()).observe(600, float("inf")))
    text = json.dumps(ledger.to_dict(), allow_nan=False)
    back = Ledger.from_dict(json.loads(text))
    assert back == ledger
    assert math.isinf(float(back.of_kind("spike")[1]["loss"]))


def test_counts_and_skip_ranges():
    ledger = _handled_spike_ledger()
    ledger.record_skip(50_000, 51_000, step=900, batches=31)
    assert ledger.rollbacks == 1 and ledger.spikes == 1 and ledger.stopped is None
    assert ledger.skip_ranges() == [(13184, 22784), (50_000, 51_000)]


def test_empty_or_missing_ledger_loads_as_empty(tmp_path):
    assert len(Ledger.from_dict(None)) == 0 and len(Ledger.from_dict({})) == 0
    assert len(Ledger.load(tmp_path / "absent.json")) == 0


def test_unknown_event_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown kind"):
        Ledger.from_dict({"version": 1, "events": [{"kind": "party"}]})


def test_save_and_load_through_the_run_directory(tmp_path):
    ledger = _handled_spike_ledger()
    ledger.save(tmp_path / "run" / "ledger.json")
    assert Ledger.load(tmp_path / "run" / "ledger.json") == ledger
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["ledger.json"]


def test_corrupt_ledger_file_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="ledger.json: unreadable ledger.*Fix"):
        Ledger.load(path)


def test_merge_adds_the_run_dir_events_an_older_checkpoint_lacks():
    run_dir_ledger = _handled_spike_ledger()
    checkpoint_ledger = Ledger()  # saved before the spike
    merged = checkpoint_ledger.merge(run_dir_ledger)
    assert merged == run_dir_ledger
    assert run_dir_ledger.merge(checkpoint_ledger) == run_dir_ledger
    assert len(run_dir_ledger.merge(run_dir_ledger)) == len(run_dir_ledger)


@pytest.mark.parametrize("events, problem", [
    ([{"kind": "skip", "first_sequence": "0", "end_sequence": 8, "step": 3, "batches": 2}],
     "skip event needs first_sequence (int)"),
    ([{"kind": "skip", "first_sequence": 9, "end_sequence": 8, "step": 3, "batches": 2}],
     "bad skip range"),
    ([{"kind": "restart", "step": 1}], "restart event needs cause (str)"),
    ([{"kind": "rollback", "from_step": 5}], "rollback event needs to_step"),
    (["x" * 10_000], "ledger event of unknown kind"),
])
def test_an_edited_ledger_is_refused_in_one_short_line(tmp_path, events, problem):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"version": 1, "events": events}))
    with pytest.raises(ValueError) as error:
        Ledger.load(path)
    assert problem in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 500


def test_a_deeply_nested_ledger_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("[" * 100_000)
    with pytest.raises(ValueError, match="unreadable ledger"):
        Ledger.load(path)
