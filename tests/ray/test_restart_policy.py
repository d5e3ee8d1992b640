"""How Ray Train is asked to restart (ray/launch.py, compat/ray.py), without a cluster: a
preemption every host saved restarts the group in place outside the failure budget, and a
local fake-TPU run starts no actor per restart that it has no use for."""

from __future__ import annotations

import cloudpickle
import pytest
from ray.train.v2._internal.execution.failure_handling import FailureDecision
from ray.train.v2.api.config import FailureConfig
from ray.train.v2.api.exceptions import WorkerGroupError

from palm_platform.compat.ray import preemption_failure_policy, trainer_without_sigint_handler
from palm_platform.hook_protocol import Preempted
from palm_platform.ray.launch import PREEMPTION_WATCHER_ENV_VAR, _controller_env


def _failed(*errors: Exception) -> WorkerGroupError:
    return WorkerGroupError("failed", dict(enumerate(errors)))


def _policy(max_failures: int = 0):
    # Ray pickles the policy into its controller actor: decide with the copy it would get.
    policy = preemption_failure_policy(Preempted)(FailureConfig(max_failures=max_failures))
    return cloudpickle.loads(cloudpickle.dumps(policy))


def test_a_preemption_every_host_saved_restarts_in_place_without_spending_the_budget():
    policy = _policy(max_failures=0)  # not one crash restart allowed
    for step in (5, 9, 14):  # each preemption after progress: again and again
        error = cloudpickle.loads(cloudpickle.dumps(_failed(Preempted(step), Preempted(step))))
        assert policy.make_decision(error) == FailureDecision.RETRY
    # A crash still counts against max_failures (0 here): Ray's own decision.
    assert policy.make_decision(_failed(RuntimeError("boom"))) == FailureDecision.RAISE


def test_a_preemption_at_the_step_of_the_last_one_raises_instead_of_looping():
    policy = _policy(max_failures=3)
    assert policy.make_decision(_failed(Preempted(7))) == FailureDecision.RETRY
    assert policy.make_decision(_failed(Preempted(7), Preempted(7))) == FailureDecision.RAISE


def test_a_preemption_beside_another_failure_is_the_other_failure():
    policy = _policy(max_failures=0)
    error = _failed(Preempted(4), RuntimeError("lost a peer"))
    assert policy.make_decision(error) == FailureDecision.RAISE


def test_preempted_keeps_its_step_across_processes():
    again = cloudpickle.loads(cloudpickle.dumps(Preempted(12)))
    assert isinstance(again, Preempted) and again.step == 12 and "step 12" in str(again)


@pytest.mark.parametrize("fake_tpu, watcher", [(True, "0"), (False, None)])
def test_ray_s_preemption_watcher_is_off_on_the_fake_cluster_only(monkeypatch, fake_tpu, watcher):
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV_VAR, raising=False)
    assert _controller_env(20.0, fake_tpu=fake_tpu).get(PREEMPTION_WATCHER_ENV_VAR) == watcher
    monkeypatch.setenv(PREEMPTION_WATCHER_ENV_VAR, "1")  # an operator's own value wins
    assert PREEMPTION_WATCHER_ENV_VAR not in _controller_env(20.0, fake_tpu=True)


def test_the_trainer_starts_no_ray_data_actor_without_datasets():
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2.api.config import ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    trainer_class = trainer_without_sigint_handler(JaxTrainer, restarts_in_place=Preempted)
    trainer = trainer_class(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    callbacks = trainer._create_default_callbacks()
    assert callbacks and not any(isinstance(c, DatasetsCallback) for c in callbacks)
