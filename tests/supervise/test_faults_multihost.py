"""The damage fault on a multi-host job: every host must make the same (collective) wait.

Waiting for in-flight saves ends in a barrier across processes, so a host that waits while
the others step on mismatches the collectives (found by tests/ray/test_ray_promises.py: gloo's
AllGather failed and the job died instead of restarting).
"""

import numpy as np

from palm_platform.supervise.config import FaultInjection
from palm_platform.supervise.faults import FaultInjector, poison_tokens

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


def test_poison_beside_other_faults_still_poisons_every_host_share(tmp_path):
    # the Ray test's job: poison, a damaged checkpoint and a killed host in one fault list
    faults = [*FAULTS, FaultInjection(kind="poison_batches", step=3, steps=1)]
    for host in range(2):
        injector = FaultInjector(faults, host_index=host, state_dir=tmp_path / "faults")
        rows = np.arange(24 + 4 * host, 28 + 4 * host)  # this host's half of step 3's batch
        clean = np.repeat(rows.astype(np.int32)[:, None], 9, axis=1)
        out = injector.poison(3, clean, data_state={"next_sequence": 24}, global_batch_size=8,
                              rows=np.arange(4 * host, 4 * host + 4), vocab_size=1024)
        for row, g in enumerate(rows):
            np.testing.assert_array_equal(out[row], poison_tokens(int(g), 9, 1024))
