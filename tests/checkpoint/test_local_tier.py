"""The RAM tier's decisions on their own: the cadence, the restore plan, the job field, and
one host's save and restore in this process (the multi-host paths:
test_local_tier_multiprocess.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import yaml
from jax.sharding import NamedSharding, PartitionSpec

from palm_platform.checkpoint.checkpoints import LOCAL as RAM
from palm_platform.checkpoint.checkpoints import PERSISTENT, Checkpoints, Due
from palm_platform.checkpoint.config import CheckpointConfig
from palm_platform.checkpoint.local_tier import COMPLETE, LocalTier
from palm_platform.checkpoint.peer_restore import (
    RamInventory,
    gather_inventory,
    plan_ram_restore,
    pods_of_processes,
    restore_from_ram,
    why_not_ram,
)
from palm_platform.job import JobError, load_job
from palm_platform.mesh import make_mesh
from tests.support.paths import ROOT

LOCAL = ROOT / "jobs" / "local-cpu.yaml"


class Notice:
    """A preemption notice that agrees on `at` and counts the questions."""

    mechanism = "test"

    def __init__(self, at: int | None = None):
        self.at, self.asked = at, []

    def reached(self, step: int) -> bool:
        self.asked.append(step)
        return step == self.at

    def close(self) -> None:
        pass


class Tier:
    """A tier that records what it was asked to do."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def save(self, step, train_state, data_state, extras) -> None:
        self.calls.append((self.name, "save", step))

    def wait_until_finished(self) -> None:
        self.calls.append((self.name, "wait"))

    def restore(self, abstract_state, step: int):
        self.calls.append((self.name, "restore", step))
        return step

    def discard_after(self, step: int) -> None:
        self.calls.append((self.name, "discard_after", step))


def _checkpoints(config: CheckpointConfig, notice: Notice, *, last_step: int | None = None,
                 calls: list | None = None) -> Checkpoints:
    calls = [] if calls is None else calls
    local = Tier(RAM, calls) if config.local is not None else None
    return Checkpoints(config, Tier(PERSISTENT, calls), local, None, last_step=last_step,
                       notice=notice)


def test_the_checkpoints_say_which_tiers_are_due_at_each_step():
    config = CheckpointConfig(directory="c", every_steps=10, local={"every_steps": 4})
    checkpoints = _checkpoints(config, Notice(), last_step=22)
    due = {step: checkpoints.due(step).tiers for step in range(1, 23)}
    assert {step: tiers for step, tiers in due.items() if tiers} == {
        4: {RAM}, 8: {RAM}, 10: {PERSISTENT}, 12: {RAM}, 16: {RAM}, 20: {RAM, PERSISTENT},
        22: {PERSISTENT}}
    assert checkpoints.notice.asked == list(range(1, 23))  # one question per step
    assert not _checkpoints(CheckpointConfig(directory="c"), Notice()).due(8)  # tier off


def test_a_preemption_notice_makes_every_tier_due_at_the_agreed_step():
    config = CheckpointConfig(directory="c", every_steps=10, local={"every_steps": 4})
    checkpoints = _checkpoints(config, Notice(at=7), last_step=22)
    assert checkpoints.due(7) == Due(frozenset({RAM, PERSISTENT}), preempted=True)
    without_ram = _checkpoints(CheckpointConfig(directory="c"), Notice(at=7))
    assert without_ram.due(7) == Due(frozenset({PERSISTENT}), preempted=True)


def test_a_preempted_save_writes_both_tiers_ram_first_then_waits_for_every_commit():
    calls: list = []
    config = CheckpointConfig(directory="c", every_steps=10, local={"every_steps": 4})
    checkpoints = _checkpoints(config, Notice(at=7), calls=calls)
    waited = checkpoints.save(7, checkpoints.due(7), None, {}, {})
    assert set(waited) == {RAM, PERSISTENT}
    assert calls == [(RAM, "save", 7), (PERSISTENT, "save", 7), (RAM, "wait"),
                     (PERSISTENT, "wait")]
    calls.clear()
    checkpoints.save(8, checkpoints.due(8), None, {}, {})  # the cadence: no wait
    assert calls == [(RAM, "save", 8)]


def test_a_rollback_restores_the_persistent_step_and_drops_newer_steps_of_both_tiers():
    calls: list = []
    config = CheckpointConfig(directory="c", every_steps=10, local={"every_steps": 4})
    assert _checkpoints(config, Notice(), calls=calls).roll_back_to(10) == 10
    assert calls == [(PERSISTENT, "restore", 10), (PERSISTENT, "discard_after", 10),
                     (RAM, "discard_after", 10)]


def test_the_ram_tier_is_off_unless_the_job_asks_for_it():
    assert CheckpointConfig(directory="c").local is None


def test_a_bad_local_cadence_names_the_file_the_field_and_the_fix(tmp_path):
    spec = yaml.safe_load(LOCAL.read_text())
    spec["checkpoint"]["local"] = {"every_steps": 0}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(JobError) as error:
        load_job(path)
    message = str(error.value)
    assert str(path) in message and "checkpoint.local.every_steps" in message
    assert "greater than or equal to 1" in message and "Fix:" in message


TWO_PODS = {0: 0, 1: 0, 2: 1, 3: 1}  # process -> pod: 2 pods x 2 hosts


def test_a_host_that_lost_its_ram_is_served_by_the_other_pod_first():
    holdings = {0: {8: {0, 2}}, 1: {8: {1, 3}}, 3: {8: {1, 3}}}  # process 2 lost its RAM
    plan = plan_ram_restore(holdings, TWO_PODS)
    assert plan.step == 8 and plan.tier == "peer"
    assert plan.sources == {0: 0, 1: 1, 2: 0, 3: 3}  # pod 0's host 0, not a pod-1 neighbour


def test_the_newest_step_wins_only_when_every_process_can_be_served():
    # step 12 exists only on pod 0's hosts: pod 1 can be served from them, one each
    holdings = {q: {8: {q}, 12: {0, 2} if q == 0 else {1, 3}} for q in (0, 1)}
    holdings.update({q: {8: {q}} for q in (2, 3)})
    plan = plan_ram_restore(holdings, TWO_PODS)
    assert (plan.step, plan.sources) == (12, {0: 0, 1: 1, 2: 0, 3: 1})
    assert plan.rounds() == [{2: 0, 3: 1}]
    # nobody holds process 3's blocks of step 12: step 12 is out, step 8 is local
    holdings[1][12] = {1}
    assert plan_ram_restore(holdings, TWO_PODS).sources == {0: 0, 1: 1, 2: 2, 3: 3}


def test_hosts_ranked_anew_after_a_restart_with_one_ram_lost_restore_from_ram():
    """The README demo's restart (issue 37): Ray Train ranked each pod's hosts the other
    way round, so every process sits where another host was, and host pod-0-w1 lost its
    RAM. Its blocks (mesh position 1 of a pod) survive on pod-1-w1 alone, which processes
    1 and 3 both need: that host sends twice, in two rounds."""
    # processes 0..3 are now pod-0-w1 (lost), pod-0-w0, pod-1-w1, pod-1-w0; position 0's
    # blocks are on pod-0-w0 (1) and pod-1-w0 (3), position 1's on pod-1-w1 (2) only
    holdings = {0: {}, 1: {24: {0, 2}}, 2: {24: {1, 3}}, 3: {24: {0, 2}}}
    plan = plan_ram_restore(holdings, TWO_PODS)
    assert plan.step == 24 and plan.tier == "peer"
    assert plan.sources == {0: 3, 1: 2, 2: 1, 3: 2}
    assert plan.rounds() == [{0: 3, 1: 2, 2: 1}, {3: 2}]
    assert why_not_ram(RamInventory(holdings, HOSTS), TWO_PODS, 24) is None


def test_no_complete_step_anywhere_means_no_ram_plan():
    assert plan_ram_restore({0: {}, 1: {}}, {0: 0, 1: 0}) is None
    assert plan_ram_restore({0: {4: {0}}}, {0: 0, 1: 0}) is None  # process 1 unserved


HOSTS = {0: "pod-0-w0", 1: "pod-0-w1", 2: "pod-1-w0", 3: "pod-1-w1"}


def test_a_restore_that_passes_over_a_newer_ram_step_names_the_host_that_lacked_it():
    """Host 1 lost its RAM, and host 3, which holds the same blocks in pod 1, never committed
    step 24: step 24 cannot be rebuilt, step 22 can."""
    holdings = {0: {22: {0, 2}, 24: {0, 2}}, 1: {},
                2: {22: {0, 2}, 24: {0, 2}}, 3: {22: {1, 3}}}
    inventory = RamInventory(holdings, HOSTS)
    plan = plan_ram_restore(holdings, TWO_PODS)
    assert (plan.step, plan.sources[1]) == (22, 3)
    assert why_not_ram(inventory, TWO_PODS, 22) == (24, (
        "RAM step 24 was incomplete (hosts 1 (pod-0-w1), 3 (pod-1-w1) lack their blocks of "
        "step 24; no peer holds them)"))
    # a persistent restore of step 20: the newest RAM step is the one named
    assert why_not_ram(inventory, TWO_PODS, 20)[0] == 24
    # nothing newer than what was restored: nothing to say
    assert why_not_ram(inventory, TWO_PODS, 24) is None
    assert why_not_ram(RamInventory({q: {} for q in HOSTS}, HOSTS), TWO_PODS, 20) is None
    holdings[3][24] = {1, 3}  # host 3 committed step 24 after all: only host 1 misses it
    holdings[0][26] = {0, 2}  # and a step 26 only host 0 reached
    assert why_not_ram(inventory, TWO_PODS, 24) == (26, (
        "RAM step 26 was incomplete (hosts 1 (pod-0-w1), 3 (pod-1-w1) lack their blocks of "
        "step 26; no peer holds them)"))


def test_the_note_names_every_host_without_a_supplier_and_counts_past_three():
    pods = {p: p // 2 for p in range(10)}
    holdings = {q: ({6: {q}} if q < 5 else {}) for q in pods}  # 5 to 9 hold nothing
    names = {q: f"h{q}" for q in pods}
    _, why = why_not_ram(RamInventory(holdings, names), pods, 4)
    assert why == ("RAM step 6 was incomplete (hosts 5 (h5), 6 (h6), 7 (h7) and 2 more lack "
                   "their blocks of step 6; no peer holds them)")
    # a 1-pod ring whose host 0 kept only its own blocks of step 4 (no neighbour copy)
    ring = RamInventory({0: {2: {0, 1}, 4: {0}}, 1: {}}, {0: "pod-0-w0", 1: "pod-0-w1"})
    assert why_not_ram(ring, {0: 0, 1: 0}, 2) == (4, (
        "RAM step 4 was incomplete (host 1 (pod-0-w1) lacks its blocks of step 4; no peer "
        "holds them)"))


def _state(mesh, value: float):
    sharding = NamedSharding(mesh, PartitionSpec("data", "model"))
    x = np.full((8, 4), value, np.float32)
    x[0, 0] = -0.0
    return {"w": jax.device_put(x, sharding),
            "step": jax.device_put(np.int32(value), NamedSharding(mesh, PartitionSpec()))}


def test_one_host_saves_and_restores_its_newest_complete_step_bitwise(tmp_path):
    mesh = make_mesh(1, 2, 2, jax.devices()[:4])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                           sharding=a.sharding),
                            _state(mesh, 0))
    tier = LocalTier(tmp_path, abstract, mesh, pods=1, host="pod-0-w0")
    for step in (3, 6, 9):
        tier.save(step, _state(mesh, step), {"next_sequence": step}, {"ledger": step})
    tier.wait_until_finished()
    assert tier.complete_steps() == [6, 9]  # the two newest are kept
    (tmp_path / "pod-0-w0" / ".tmp-12-1").mkdir()  # what a killed save leaves
    (tmp_path / "pod-0-w0" / "12").mkdir()
    tier = LocalTier(tmp_path, abstract, mesh, pods=1, host="pod-0-w0")
    assert sorted(p.name for p in (tmp_path / "pod-0-w0").iterdir()) == ["6", "9"]
    assert (tmp_path / "pod-0-w0" / "9" / COMPLETE).exists()
    plan = plan_ram_restore(gather_inventory(tier).holdings, pods_of_processes(mesh))
    restored = restore_from_ram(tier, plan)
    assert (restored.step, restored.tier, restored.bytes_peer) == (9, "local", 0)
    assert restored.bytes_local == 8 * 4 * 4 + 4  # each block read once
    assert restored.data_state == {"next_sequence": 9} and restored.ledger == {"ledger": 9}
    want = _state(mesh, 9)
    assert np.asarray(restored.train_state["w"]).tobytes() == np.asarray(want["w"]).tobytes()
    assert int(restored.train_state["step"]) == 9
    tier.discard_after(6)
    assert tier.complete_steps() == [6]
    (tmp_path / "pod-1-w0").mkdir()  # another host's folder: the job's folder stays
    tier.release()  # the run ended: this host's RAM given back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pod-1-w0"]
    (tmp_path / "pod-1-w0").rmdir()
    LocalTier(tmp_path, abstract, mesh, pods=1, host="pod-0-w0").release()
    assert not tmp_path.exists()  # the last host's release removes the job's folder too


def test_a_relative_ram_folder_resolves_against_the_job_file(tmp_path):
    spec = yaml.safe_load(LOCAL.read_text())
    spec["checkpoint"]["local"] = {"directory": "ram", "every_steps": 2}
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_job(path).checkpoint.local.directory == str(tmp_path / "jobs" / "ram")


def test_a_new_launch_removes_the_steps_another_launch_left_and_a_restart_keeps_them(tmp_path):
    """The demo's bug: a fresh `palm run` of a job found the step 60 an earlier run of the
    same job name had left in /dev/shm, and resumed there, training nothing."""
    mesh = make_mesh(1, 2, 2, jax.devices()[:4])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                           sharding=a.sharding),
                            _state(mesh, 0))
    earlier = LocalTier(tmp_path, abstract, mesh, pods=1, host="pod-0-w0", launch=100.0)
    earlier.save(60, _state(mesh, 60), {}, {})
    earlier.wait_until_finished()
    restart = LocalTier(tmp_path, abstract, mesh, pods=1, host="pod-0-w0", launch=100.0)
    assert restart.complete_steps() == [60]  # the same launch's restart reads it
    fresh = LocalTier(tmp_path, abstract, mesh, pods=1, host="pod-0-w0", launch=200.0)
    assert fresh.complete_steps() == []
    assert plan_ram_restore(gather_inventory(fresh).holdings, pods_of_processes(mesh)) is None
