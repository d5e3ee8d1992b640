"""plan_rollback: restore target, data skip in sequences, escalation, stop cases."""

from palm_platform.supervise.config import SpikeConfig
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.rollback import plan_rollback
from palm_platform.supervise.spike import Spike

CFG = SpikeConfig(window=20, rollback_steps=100, skip_batches=300, max_rollbacks=3,
                   recurrence_steps=500)
STATE = {"next_sequence": 13184, "skip_ranges": []}


def _spike(step, loss=9.81):
    return Spike(step=step, loss=loss, rule="ratio", limit=9.3, median=3.1, scale=3.0, factor=3.0)


def _plan(step, checkpoints, cfg=CFG, ledger=None, state=STATE, batch_size=32):
    return plan_rollback(_spike(step), checkpoints, cfg, ledger or Ledger(),
                         data_state=state, batch_size=batch_size)


def test_restores_newest_checkpoint_at_least_rollback_steps_before_the_spike():
    plan = _plan(412, [100, 200, 300, 400])
    assert plan.action == "rollback"
    assert plan.restore_step == 300 and plan.note == ""
    assert plan.spike.step - plan.restore_step == 112


def test_skip_starts_at_the_spike_batch_and_spans_skip_batches_times_batch_size():
    plan = _plan(412, [300], batch_size=32)
    assert (plan.first_sequence, plan.end_sequence) == (13184, 13184 + 300 * 32)
    assert plan.skip_batches == 300 and plan.end_sequence - plan.first_sequence == 9600


def test_skip_starts_after_an_earlier_skip_range_the_batch_jumped_over():
    state = {"next_sequence": 1000, "skip_ranges": [[1000, 2000]]}
    plan = _plan(412, [300], state=state, batch_size=10)
    assert (plan.first_sequence, plan.end_sequence) == (2000, 2000 + 3000)


def test_no_checkpoint_old_enough_uses_the_oldest_and_says_so():
    plan = _plan(150, [100, 140])
    assert plan.action == "rollback" and plan.restore_step == 100
    assert "no checkpoint 100 steps before the spike" in plan.note
    assert "step 100, 50 steps back" in plan.note


def test_checkpoints_after_the_spike_are_never_restore_targets():
    plan = _plan(150, [100, 150, 160])
    assert plan.restore_step == 100


def test_no_checkpoint_at_all_stops_with_a_reason():
    plan = _plan(5, [])
    assert plan.action == "stop" and plan.restore_step is None and plan.skip_batches == 0
    assert "no checkpoint at or before step 5" in plan.reason
    assert "step 0" in plan.reason  # the fix


def test_rollback_steps_zero_may_restore_the_spike_step_itself():
    cfg = CFG.model_copy(update={"rollback_steps": 0})
    assert _plan(400, [300, 400], cfg=cfg).restore_step == 400


def _ledger_with_rollback_at(*steps):
    ledger = Ledger()
    for step in steps:
        _plan(step, [0], ledger=ledger).record(ledger)
    return ledger


def test_recurrence_widens_the_skip_twofold_per_earlier_nearby_rollback():
    ledger = _ledger_with_rollback_at(400)
    plan = _plan(450, [0, 300], ledger=ledger)
    assert plan.action == "rollback" and plan.recurrences == 1
    assert plan.skip_batches == 600 and "widened to 600" in plan.reason
    plan.record(ledger)
    assert _plan(420, [0, 300], ledger=ledger).skip_batches == 1200


def test_a_spike_far_from_earlier_ones_is_not_a_recurrence():
    ledger = _ledger_with_rollback_at(400)
    plan = _plan(2000, [0, 1800], ledger=ledger)
    assert plan.recurrences == 0 and plan.skip_batches == 300


def test_recurrence_with_on_recurrence_stop_stops():
    cfg = CFG.model_copy(update={"on_recurrence": "stop"})
    ledger = _ledger_with_rollback_at(400)
    plan = _plan(450, [0, 300], cfg=cfg, ledger=ledger)
    assert plan.action == "stop" and "on_recurrence is 'stop'" in plan.reason


def test_recurrence_beyond_max_rollbacks_stops_even_when_widening():
    ledger = _ledger_with_rollback_at(400, 410, 420)  # max_rollbacks=3
    plan = _plan(430, [0, 300], ledger=ledger)
    assert plan.action == "stop"
    assert "3 rollback(s)" in plan.reason and "max_rollbacks=3" in plan.reason


def test_max_rollbacks_zero_stops_at_the_first_spike():
    cfg = CFG.model_copy(update={"max_rollbacks": 0})
    plan = _plan(412, [300], cfg=cfg)
    assert plan.action == "stop" and "rollbacks are off" in plan.reason


def test_plan_is_pure():
    ledger = _ledger_with_rollback_at(400)
    before = ledger.to_dict()
    assert _plan(450, [0, 300], ledger=ledger) == _plan(450, [0, 300], ledger=ledger)
    assert ledger.to_dict() == before
