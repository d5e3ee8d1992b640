"""Fault injection: once across restarts, real SIGKILL, hang + watchdog, checkpoint damage,
poison defined on data positions (pure, clean after a skip), batch indices vs the pipeline."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from palm_platform.data import DataConfig, build_pipeline
from palm_platform.supervise.config import FaultInjection
from palm_platform.supervise.faults import FaultInjector, poison_tokens
from palm_platform.supervise.positions import batch_sequence_indices
from tests.support.token_store import source, write_token_store

VOCAB = 1024
SEQ = 9  # seq_len 8 + 1


class Recorder:
    def __init__(self):
        self.calls = []

    def kill(self):
        self.calls.append("kill")

    def hang(self):
        self.calls.append("hang")


def _injector(faults, state_dir, host=0, recorder=None, **kw):
    recorder = recorder or Recorder()
    return FaultInjector([FaultInjection(**f) for f in faults], host_index=host,
                         state_dir=state_dir, kill=recorder.kill, hang=recorder.hang, **kw)


def test_kill_fires_once_on_its_host_across_a_simulated_restart(tmp_path):
    faults = [{"kind": "kill_host", "step": 5, "host": 1}]
    other, victim = Recorder(), Recorder()
    for step in range(8):
        _injector(faults, tmp_path, host=0, recorder=other).maybe_fire(step)
        _injector(faults, tmp_path, host=1, recorder=victim).maybe_fire(step)
    restarted = Recorder()  # the new process after the kill replays steps 3..7
    for step in range(3, 8):
        _injector(faults, tmp_path, host=1, recorder=restarted).maybe_fire(step)
    assert other.calls == [] and victim.calls == ["kill"] and restarted.calls == []


def test_a_fault_whose_step_was_passed_fires_at_the_next_step_reached(tmp_path):
    recorder = Recorder()
    injector = _injector([{"kind": "hang_host", "step": 5}], tmp_path, recorder=recorder)
    injector.maybe_fire(9)  # resumed from checkpoint 9
    assert recorder.calls == ["hang"] and len(injector.fired()) == 1


_CHILD = textwrap.dedent("""
    import os, sys, types
    from palm_platform.supervise.faults import FaultInjector
    from palm_platform.supervise.watchdog import Watchdog
    kind, state_dir = sys.argv[1], sys.argv[2]
    # a stand-in for FaultInjection: importing the job module costs seconds (grain)
    fault = types.SimpleNamespace(kind=kind, step=2, host=0, steps=1)
    injector = FaultInjector([fault], host_index=0, state_dir=state_dir)
    watchdog = Watchdog(0.5, lambda s: os._exit(3), poll_s=0.05).start()
    for step in range(4):
        injector.maybe_fire(step)
        watchdog.beat(step)
    print("finished")
""")


@pytest.mark.parametrize(("kind", "first_rc"), [("kill_host", -9), ("hang_host", 3)])
def test_real_kill_and_hang_end_the_process_once_then_the_restart_finishes(
    tmp_path, kind, first_rc
):
    def attempt():
        return subprocess.run([sys.executable, "-c", _CHILD, kind, str(tmp_path)],
                              capture_output=True, text=True, timeout=60)

    first = attempt()
    assert first.returncode == first_rc, first.stderr
    second = attempt()
    assert second.returncode == 0 and "finished" in second.stdout, second.stderr


@pytest.mark.parametrize(("kind", "host_survives"), [("kill_host", False),
                                                     ("crash_process", True)])
def test_a_lost_host_takes_its_agent_a_crashed_process_leaves_it(tmp_path, kind, host_survives):
    # the host agent (ray/host_agent.py) runs the JAX process; a stand-in agent process here
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        crashed = subprocess.run([sys.executable, "-c", _CHILD, kind, str(tmp_path)],
                                 capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "PALM_HOST_AGENT_PID": str(agent.pid)})
        assert crashed.returncode == -9, crashed.stderr
        time.sleep(0.2)
        assert (agent.poll() is None) == host_survives
    finally:
        agent.kill()
        agent.wait()


def test_crash_process_keeps_the_hosts_ram_checkpoints(tmp_path):
    ram = tmp_path / "ram" / "pod-1-w0"
    (ram / "8").mkdir(parents=True)
    seen = []
    injector = FaultInjector([FaultInjection(kind="crash_process", step=9, host=1)],
                             host_index=1, state_dir=tmp_path / "faults", ram_folder=ram,
                             crash=lambda: seen.append(ram.exists()))
    injector.maybe_fire(9)
    assert seen == [True] and ram.exists()


def _fake_checkpoint(root, step, manifest=True):
    step_dir = root / str(step)
    (step_dir / "state" / "d").mkdir(parents=True)
    (step_dir / "state" / "d" / "chunk").write_bytes(b"x" * 1000)
    (step_dir / "state" / "meta.json").write_text("{}")
    if manifest:
        (step_dir / "palm_manifest.json").write_text("{}")
    return step_dir


def test_damage_truncates_the_largest_file_of_the_newest_finished_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    _fake_checkpoint(ckpt, 10)
    _fake_checkpoint(ckpt, 20)
    _fake_checkpoint(ckpt, 30, manifest=False)  # still being written: not a victim
    injector = _injector([{"kind": "damage_checkpoint", "step": 25}], tmp_path / "faults")
    assert injector.maybe_fire(24, checkpoint_dir=ckpt) == []
    done = injector.maybe_fire(25, checkpoint_dir=ckpt)
    assert len(done) == 1 and "20/state/d/chunk" in done[0]
    assert (ckpt / "20/state/d/chunk").stat().st_size == 500
    assert (ckpt / "10/state/d/chunk").stat().st_size == 1000
    assert (ckpt / "30/state/d/chunk").stat().st_size == 1000
    assert injector.maybe_fire(26, checkpoint_dir=ckpt) == []  # once


def test_damage_waits_while_no_checkpoint_is_finished(tmp_path):
    injector = _injector([{"kind": "damage_checkpoint", "step": 1}], tmp_path / "faults")
    assert injector.maybe_fire(1, checkpoint_dir=tmp_path / "none") == []
    assert injector.fired() == []


def test_poison_tokens_are_a_pure_function_of_the_sequence_index():
    a, b = poison_tokens(123, SEQ, VOCAB), poison_tokens(123, SEQ, VOCAB)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int32 and a.min() >= 0 and a.max() < VOCAB
    assert not np.array_equal(a, poison_tokens(124, SEQ, VOCAB))


def _batch(first, size):
    # stand-in data: row i of a batch read from sequence g holds g everywhere
    return np.repeat(np.arange(first, first + size, dtype=np.int32)[:, None], SEQ, axis=1)


def _run_poisoned(injector, step, state, size=8, process_index=0, process_count=1):
    indices = batch_sequence_indices(state, size)
    per = size // process_count
    mine = indices[process_index * per : (process_index + 1) * per]
    tokens = np.repeat(mine.astype(np.int32)[:, None], SEQ, axis=1)
    return tokens, injector.poison(step, tokens, data_state=state, global_batch_size=size,
                                   rows=np.arange(process_index * per, (process_index + 1) * per),
                                   vocab_size=VOCAB)


def test_poison_replaces_exactly_the_batches_of_steps_s_to_s_plus_steps(tmp_path):
    injector = _injector([{"kind": "poison_batches", "step": 3, "steps": 2}], tmp_path)
    poisoned_steps = []
    for step in range(8):
        clean, out = _run_poisoned(injector, step, {"next_sequence": 8 * step})
        if not np.array_equal(clean, out):
            assert not np.any(clean == out)  # every row replaced
            poisoned_steps.append(step)
            for row, g in enumerate(clean[:, 0]):
                np.testing.assert_array_equal(out[row], poison_tokens(int(g), SEQ, VOCAB))
    assert poisoned_steps == [3, 4]
    assert injector.poisoned_ranges() == [(24, 40)]


def test_poison_range_follows_a_batch_size_ramp(tmp_path):
    injector = _injector([{"kind": "poison_batches", "step": 3, "steps": 2}], tmp_path,
                         batch_size_at=lambda s: 8 if s < 4 else 16)
    _run_poisoned(injector, 3, {"next_sequence": 24})
    assert injector.poisoned_ranges() == [(24, 24 + 8 + 16)]


def test_after_rollback_with_skip_the_poison_is_never_seen_again(tmp_path):
    injector = _injector([{"kind": "poison_batches", "step": 3, "steps": 2}], tmp_path)
    _run_poisoned(injector, 3, {"next_sequence": 24})  # spike at step 3
    # rollback to step 1 and skip 5 batches of 8 from the spike's data position 24
    skip = [[24, 64]]
    for step in range(1, 10):
        position = 8 * step if step < 3 else 64 + 8 * (step - 3)  # first sequence read
        state = {"next_sequence": 24 if step == 3 else position, "skip_ranges": skip}
        assert batch_sequence_indices(state, 8)[0] == position
        clean, out = _run_poisoned(injector, step, state)
        np.testing.assert_array_equal(clean, out)
    assert injector.poisoned_ranges() == [(24, 40)]  # not re-recorded for the replay


def test_a_restart_without_skip_sees_the_same_poison_on_every_host(tmp_path):
    faults = [{"kind": "poison_batches", "step": 3}]
    first = _injector(faults, tmp_path)
    _run_poisoned(first, 3, {"next_sequence": 24})
    restarted = [_injector(faults, tmp_path, host=h) for h in range(2)]
    outs = [_run_poisoned(inj, 3, {"next_sequence": 24}, process_index=h, process_count=2)[1]
            for h, inj in enumerate(restarted)]
    np.testing.assert_array_equal(
        np.concatenate(outs), np.stack([poison_tokens(g, SEQ, VOCAB) for g in range(24, 32)])
    )


def test_poison_record_is_json_in_state_dir(tmp_path):
    injector = _injector([{"kind": "poison_batches", "step": 0}], tmp_path)
    _run_poisoned(injector, 0, {"next_sequence": 0})
    (record,) = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    assert json.loads(record.read_text())["end_sequence"] == 8


def test_batch_indices_from_a_recorded_state_match_the_pipeline(tmp_path):
    config = DataConfig(
        store=write_token_store(tmp_path / "store", {"numbers": [np.arange(3, 1003)]}),
        sources=[source("numbers")],
        shuffle_window=16,
    )
    pipeline = build_pipeline(config, seq_len=8, base_dir=tmp_path, process_index=0,
                              process_count=1, cache_dir=tmp_path / "cache")
    pipeline.add_skip_range(20, 30)
    pipeline.add_skip_range(36, 40)
    for size in [8, 8, 8, 16, 8]:
        state = pipeline.get_state()
        expected = pipeline.sequences(batch_sequence_indices(state, size))
        np.testing.assert_array_equal(pipeline.local_batch(size), expected)


def test_kill_host_loses_the_hosts_ram_checkpoint_folder_first(tmp_path):
    # the fake hosts share one /dev/shm: a killed host's RAM tier must vanish as on real pods
    ram = tmp_path / "ram" / "pod-1-w0"
    (ram / "8").mkdir(parents=True)
    (ram / "8" / "own.bin").write_bytes(b"x" * 16)
    other = tmp_path / "ram" / "pod-0-w0"
    other.mkdir()
    seen = []
    injector = FaultInjector([FaultInjection(kind="kill_host", step=9, host=1)], host_index=1,
                             state_dir=tmp_path / "faults", ram_folder=ram,
                             kill=lambda: seen.append(ram.exists()))
    injector.maybe_fire(8)
    assert ram.exists() and not seen
    injector.maybe_fire(9)
    assert seen == [False] and not ram.exists() and other.exists()
