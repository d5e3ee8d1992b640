"""Retention: newest K + the rollback window + every M-th step, as the config says."""

from __future__ import annotations

import dataclasses
import datetime

import jax.numpy as jnp
import pydantic
import pytest

from palm_platform.checkpoint import CheckpointConfig, Checkpointer
from palm_platform.checkpoint.retention import RollbackWindow, preservation_policy


@dataclasses.dataclass
class _Info:
    step: int
    metrics: dict | None = None
    time: datetime.datetime = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _kept(policy, steps: list[int]) -> list[int]:
    flags = policy.should_preserve([_Info(s) for s in steps], context=None)
    return [s for s, keep in zip(steps, flags, strict=True) if keep]


def test_rollback_window_keeps_every_step_within_reach_and_the_newest_one_beyond_it():
    assert _kept(RollbackWindow(rollback_steps=25), [10, 20, 50, 80, 90, 100, 110]) == [
        80,
        90,
        100,
        110,
    ]
    # no step exactly 25 back: 80 is the newest at least 25 behind 110
    assert _kept(RollbackWindow(rollback_steps=25), [10, 20, 50, 80, 110]) == [80, 110]


def test_policy_is_the_union_of_newest_rollback_window_and_every_mth_step():
    config = CheckpointConfig(
        directory="x", every_steps=10, keep_last=2, rollback_steps=25, keep_every=50
    )
    steps = list(range(10, 130, 10))
    assert _kept(preservation_policy(config), steps) == [50, 90, 100, 110, 120]


def test_keep_every_that_is_not_a_multiple_of_the_cadence_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="multiple of every_steps"):
        CheckpointConfig(directory="x", every_steps=100, keep_every=250)


def test_unknown_config_field_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="max_to_keep"):
        CheckpointConfig(directory="x", max_to_keep=3)


def test_a_sequence_of_saves_leaves_exactly_what_the_policy_keeps(tmp_path):
    config = CheckpointConfig(
        directory=str(tmp_path), every_steps=10, keep_last=2, rollback_steps=25, keep_every=50
    )
    checkpointer = Checkpointer(config, directory=tmp_path)
    state = {"w": jnp.ones((4, 4))}
    for step in range(10, 121, 10):  # the cadence (Checkpoints.due decides it)
        checkpointer.save(step, state, {"i": step}, {})
    checkpointer.wait_until_finished()
    assert checkpointer.steps() == [50, 90, 100, 110, 120]
    on_disk = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert on_disk == [50, 90, 100, 110, 120]
    checkpointer.close()
