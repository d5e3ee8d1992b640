"""The ledger records a rollback plan's skip, so a restart applies it again; it refuses
what is not a ledger and saves into folders that do not exist yet."""

import json

import pytest

from palm_platform.supervise.config import SpikeConfig
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.rollback import plan_rollback
from palm_platform.supervise.spike import Spike

SPIKE = Spike(step=412, loss=9.81, rule="ratio", limit=9.3, median=3.10, scale=3.0, factor=3.0)


def test_a_rollback_plan_records_spike_rollback_and_its_skip_range():
    ledger = Ledger()
    plan = plan_rollback(SPIKE, [100, 200, 300], SpikeConfig(), ledger,
                         data_state={"next_sequence": 13184}, batch_size=32)
    added = plan.record(ledger)
    assert [e["kind"] for e in added] == ["spike", "rollback", "skip"]
    assert [tuple(r) for r in ledger.skip_ranges()] == [(13184, 13184 + plan.skip_batches * 32)]
    restarted = Ledger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restarted.skip_ranges() == ledger.skip_ranges()


def test_a_stop_plan_records_no_skip():
    ledger = Ledger()
    plan = plan_rollback(SPIKE, [], SpikeConfig(), ledger, data_state={"next_sequence": 0},
                         batch_size=32)
    assert plan.action == "stop"
    assert [e["kind"] for e in plan.record(ledger)] == ["spike", "stop"]
    assert list(ledger.skip_ranges()) == []


@pytest.mark.parametrize("data", [{"events": "spike"}, {"version": 1}, ["events"]])
def test_what_is_not_a_ledger_is_refused(data):
    with pytest.raises(ValueError, match="not a ledger"):
        Ledger.from_dict(data)


def test_save_creates_missing_folders(tmp_path):
    ledger = Ledger()
    ledger.record_restart(5, "test")
    path = tmp_path / "a" / "b" / "ledger.json"
    ledger.save(path)
    assert Ledger.from_dict(json.loads(path.read_text())).events == ledger.events


def test_a_batch_of_one_sequence_is_a_valid_plan_and_zero_is_not():
    plan = plan_rollback(SPIKE, [300], SpikeConfig(), Ledger(), data_state={"next_sequence": 7},
                         batch_size=1)
    assert (
        plan.action == "rollback" and plan.end_sequence - plan.first_sequence == plan.skip_batches
    )
    with pytest.raises(ValueError, match="batch_size must be positive"):
        plan_rollback(SPIKE, [300], SpikeConfig(), Ledger(), data_state={"next_sequence": 7},
                      batch_size=0)
