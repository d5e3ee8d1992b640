"""The damage fault on a multi-host job: every host must make the same (collective) wait.

Waiting for in-flight saves ends in a barrier across processes, so a host that waits while
the others step on mismatches the collectives (found by tests/test_ray_promises.py: gloo's
AllGather failed and the job died instead of restarting).
"""

from palm_platform.job import FaultInjection
from palm_platform.supervise.faults import FaultInjector

FAULTS = [FaultInjection(kind="damage_checkpoint", step=11, host=0),
          FaultInjection(kind="kill_host", step=13, host=1)]


def test_every_host_waits_for_saves_at_the_damage_step_and_only_there(tmp_path):
    hosts = [FaultInjector(FAULTS, host_index=h, state_dir=tmp_path / "faults") for h in range(3)]
    for step in range(20):
        assert [h.damage_due(step) for h in hosts] == [step == 11] * 3, step


def test_the_wait_does_not_depend_on_what_one_host_has_fired(tmp_path):
    (tmp_path / "ckpt" / "10").mkdir(parents=True)
    (tmp_path / "ckpt" / "10" / "data").write_bytes(b"x" * 64)
    (tmp_path / "ckpt" / "10" / "palm_manifest.json").write_text("{}")
    host0, host1 = (FaultInjector(FAULTS[:1], host_index=h, state_dir=tmp_path / "faults")
                    for h in range(2))
    assert host0.maybe_fire(11, checkpoint_dir=tmp_path / "ckpt")  # host 0 damaged step 10
    assert not host1.maybe_fire(11, checkpoint_dir=tmp_path / "ckpt")  # not host 1's fault
    # a replay of step 11 after the restart: both wait again, or neither does
    assert host0.damage_due(11) and host1.damage_due(11)
    assert not host0.damage_due(12) and not host1.damage_due(12)
