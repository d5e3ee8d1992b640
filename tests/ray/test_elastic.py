"""Elastic pods: the pod count a worker group holds, the microbatches that keep the global
batch, the job field, and training that changes pod count mid-way (platform/pod_count.py)."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from palm_platform.data import DataConfig, build_pipeline
from palm_platform.job import JobError, load_job
from palm_platform.metrics.goodput import GoodputTracker
from palm_platform.metrics.sink import read_records
from palm_platform.pod_count import ElasticShapeError, microbatches_at, pods_in_group
from palm_platform.topology import SliceShape
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"
# Tolerances for a run that shrinks 2 pods -> 1 and grows back, against the uninterrupted
# 2-pod run. Only the order of the gradient sum changes (half of it moves from the cross-pod
# mean into the pod's microbatch scan), so:
# - the first step on 1 pod starts from bitwise-equal parameters on the same sequences: its
#   loss is bitwise equal and its gradient norm agrees to sum-order rounding (measured 1.2e-5
#   relative; bfloat16 activations make that larger than float32's 1e-7);
# - after that the Adam-like update divides by sqrt(second moment), which turns rounding in
#   near-zero gradients (rare tokens' embedding rows) into full-size steps, so single
#   coordinates may differ by ~lr (measured 0.01) while the mean difference stays tiny
#   (measured 3.7e-5) and the losses agree (measured 6.7e-5 relative). A wrong batch, split or
#   lost step changes the step-5 loss itself and moves every parameter by ~lr.
GRAD_NORM_RTOL = 1e-4
MEAN_PARAM_TOLERANCE = 2e-4
LOSS_RTOL = 5e-4


@pytest.mark.parametrize(("devices", "chips", "pods"), [(16, 8, 2), (8, 8, 1), (4, 4, 1)])
def test_pod_count_comes_from_the_worker_groups_devices(devices, chips, pods):
    assert pods_in_group(devices, chips, min_pods=1, max_pods=2) == pods


def test_a_partial_slice_or_too_few_pods_is_refused():
    with pytest.raises(ElasticShapeError, match="not a whole number of 8-chip pods"):
        pods_in_group(12, 8, 1, 2)
    with pytest.raises(ElasticShapeError, match=r"topology.min_pods"):
        pods_in_group(8, 8, 2, 2)


def test_fewer_pods_keep_the_global_batch_with_more_microbatches():
    # 32 sequences, 16 per microbatch at 2 pods (8 per pod): 2 microbatches; 1 pod keeps
    # 8 per microbatch, so 4 microbatches of the same 32 sequences.
    assert microbatches_at(32, 16, full_pods=2, pods=2, data_parallel=4) == 2
    assert microbatches_at(32, 16, full_pods=2, pods=1, data_parallel=4) == 4
    assert microbatches_at(8, None, full_pods=2, pods=1, data_parallel=4) == 2
    with pytest.raises(ElasticShapeError, match="cannot hold a batch of 6"):
        microbatches_at(6, None, full_pods=3, pods=2, data_parallel=2)


def _job_file(tmp_path: Path, **topology) -> Path:
    raw = yaml.safe_load(JOB.read_text())
    raw["topology"].update(topology)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_min_pods_defaults_to_pods_and_is_validated(tmp_path):
    job = load_job(_job_file(tmp_path))
    assert job.topology.fewest_pods == 2 and not job.topology.elastic
    assert load_job(_job_file(tmp_path, min_pods=1)).topology.elastic
    for bad in (3, 0):
        with pytest.raises(JobError, match="topology.min_pods"):
            load_job(_job_file(tmp_path, min_pods=bad))


def test_a_min_pods_the_batch_cannot_hold_names_the_field(tmp_path):
    raw = yaml.safe_load(JOB.read_text())
    raw["topology"].update(pods=3, min_pods=2, hosts_per_pod=1)
    raw["train"]["batch_schedule"] = [{"sequences": 6}]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(JobError, match=r"topology.min_pods.*cannot hold a batch of 6") as info:
        load_job(path)
    assert len(str(info.value)) < 600  # a line or two, not the whole job


def test_step_k_is_the_same_sequences_whatever_the_process_count(tmp_path):
    """A pod lost means fewer processes: each reads another slice of the same global batch."""
    def global_batch(processes: int) -> np.ndarray:
        parts = []
        for index in range(processes):
            pipe = build_pipeline(DataConfig(tokenizer="builtin:default"), seq_len=32,
                                  base_dir=tmp_path, process_index=index, process_count=processes,
                                  cache_dir=tmp_path / "cache")
            pipe.set_state({"next_sequence": 3 * 16, "skip_ranges": []})  # step 3 of 16-batches
            parts.append(pipe.local_batch(16))
        return np.concatenate(parts)

    two_pods, one_pod = global_batch(4), global_batch(2)
    assert two_pods.shape == (16, 33)
    np.testing.assert_array_equal(two_pods, one_pod)
    assert not np.array_equal(two_pods, global_batch(1)[::-1])  # the rows do carry order


def test_degraded_time_is_its_own_badput_cause():
    now = [0.0]
    tracker = GoodputTracker(clock=lambda: now[0])
    with tracker.phase("step", step=0):
        now[0] += 2.0
    assert tracker.reclassify(0, 0.5, cause="degraded") == 1.0
    summary = tracker.summary()
    assert summary["productive_s"] == 1.0 and summary["badput_s"]["degraded"] == 1.0


# -- training across pod counts (one process, 8 CPU devices = 2 pods of 4) -----------------

def _train(folder: Path, stages: list[tuple[int, int]]) -> tuple[dict, list[dict]]:
    """Train through `stages` of (pods, last step), each a new Trainer resuming from the
    newest checkpoint (as a restarted worker group would), on that many pods' devices."""
    folder.mkdir()
    shutil.copy(JOB, folder / "job.yaml")
    base = load_job(_job_file(folder, min_pods=1))
    params = None
    for pods, last_step in stages:
        job = base.model_copy(update={
            "train": base.train.model_copy(update={"steps": last_step}),
            "checkpoint": base.checkpoint.model_copy(update={
                "directory": str(folder / "ckpt"), "every_steps": 4}),
            "run_dir": str(folder / "run")})
        trainer = Trainer(job, folder / "run", attempt=1 if params is not None else 0,
                          devices=jax.devices()[: pods * 4])
        try:
            trainer.run()
            params = jax.tree.map(np.asarray, trainer.final_state.params)
        finally:
            trainer.close()
    return params, read_records(folder / "run")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    resized = [(2, 4), (1, 8), (2, 12)]  # lose pod 1 after step 4, get it back after step 8
    return {"full": _train(root / "full", [(2, 12)]),
            "resized": _train(root / "resized", resized),
            "again": _train(root / "again", resized)}


@pytest.mark.slow
def test_a_run_that_shrinks_and_grows_ends_near_the_uninterrupted_run(runs):
    (full, full_records), (resized, resized_records) = runs["full"], runs["resized"]
    f = {r["step"]: r for r in full_records if r["kind"] == "step"}
    g = {r["step"]: r for r in resized_records if r["kind"] == "step"}
    assert g[5]["pods"] == 1 and g[5]["loss"] == f[5]["loss"]  # same parameters, same sequences
    assert g[5]["grad_norm"] == pytest.approx(f[5]["grad_norm"], rel=GRAD_NORM_RTOL)
    for step in range(6, 13):
        assert g[step]["loss"] == pytest.approx(f[step]["loss"], rel=LOSS_RTOL)
    mean_diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.mean(np.abs(a - b))),
                                              full, resized))
    assert max(mean_diffs) <= MEAN_PARAM_TOLERANCE
    assert max(mean_diffs) > 0  # other sum order: not bitwise (or the 1-pod stage did not run)


@pytest.mark.slow
def test_two_runs_with_the_same_resizes_end_bitwise_equal(runs):
    resized, again = runs["resized"][0], runs["again"][0]
    for a, b in zip(jax.tree.leaves(resized), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resizes_are_events_and_steps_say_their_pod_count(runs):
    records = runs["resized"][1]
    resizes = [(r["step"], r["from_pods"], r["to_pods"], r["cause"]) for r in records
               if r["kind"] == "resize"]
    assert resizes == [(4, 2, 1, "pod lost"), (8, 1, 2, "pod returned")]
    pods = {r["step"]: r["pods"] for r in records if r["kind"] == "step"}
    assert [pods[s] for s in (4, 5, 8, 9, 12)] == [2, 1, 1, 2, 2]
    sizes = {r["step"]: r["batch_size"] for r in records if r["kind"] == "step"}
    assert sizes[5] == sizes[4]  # the global batch did not shrink with the pods
    goodput = [r for r in records if r["kind"] == "goodput"]
    assert goodput[1]["badput_degraded_s"] > 0 and "badput_degraded_s" not in goodput[0]


# -- on Ray: the worker counts asked for, and a run below min_pods gives up ----------------

def _tpu_node(pod: int) -> dict:
    from palm_platform.topology import POD_TYPE_LABEL, SLICE_NAME_LABEL, WORKER_ID_LABEL

    return {
        "Alive": True,
        "NodeID": f"node{pod}",
        "Resources": {"TPU": 4.0, "accelerator_type:TPU-V4": 1.0, "TPU-v4-8-head": 1.0},
        "Labels": {SLICE_NAME_LABEL: f"pod-{pod}", WORKER_ID_LABEL: "0", POD_TYPE_LABEL: "v4-8"},
    }


def test_an_elastic_job_asks_ray_for_a_range_of_whole_pods():
    from palm_platform.pod_count import worker_counts

    assert worker_counts(SliceShape(2, 768, 4, "12x16x16", min_pods=1)) == (768, 1536)
    # not elastic: Ray's fixed policy
    assert worker_counts(SliceShape(2, 768, 4, "12x16x16", min_pods=2)) == 1536
    assert worker_counts(SliceShape(2, 768, 4, "12x16x16")) == 1536


def test_fewer_than_min_pods_for_the_grace_period_gives_up_once_with_the_reason():
    from palm_platform.ray.min_pods import MinPodsMonitor

    nodes, now, reasons = [_tpu_node(0), _tpu_node(1)], [0.0], []
    monitor = MinPodsMonitor(SliceShape(2, 1, 4, "2x2x1"), reasons.append, grace_s=30,
                             nodes=lambda: nodes, clock=lambda: now[0])
    assert not monitor.check()
    nodes.pop()  # pod 1 lost: below min_pods=2
    assert not monitor.check()
    now[0] = 20.0
    assert not monitor.check() and not reasons  # still inside the grace period
    nodes.append(_tpu_node(1))  # back in time: the clock restarts
    assert not monitor.check()
    nodes.pop()
    now[0] = 40.0
    assert not monitor.check()
    now[0] = 71.0
    assert monitor.check() and monitor.check()
    assert len(reasons) == 1 and "topology.min_pods=2" in reasons[0] and "30 s" in reasons[0]


def test_remove_pod_without_a_cluster_or_a_pod_number_says_what_to_do(tmp_path):
    import subprocess
    import sys

    palm = Path(sys.executable).parent / "palm"
    no_pod = subprocess.run([palm, "cluster", "remove-pod", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert no_pod.returncode == 2 and "which pod?" in no_pod.stderr
    no_cluster = subprocess.run([palm, "cluster", "add-pod", "1", "--dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=60)
    assert no_cluster.returncode == 2 and "no local cluster recorded" in no_cluster.stderr
    drain_add = subprocess.run([palm, "cluster", "add-pod", "1", "--drain", "--dir",
                                str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert drain_add.returncode == 2 and "--drain is for remove-pod" in drain_add.stderr
    assert "Traceback" not in no_pod.stderr + no_cluster.stderr + drain_add.stderr


def test_an_elastic_start_up_waits_in_short_placement_attempts_filling_the_same_window():
    from palm_platform.ray.launch import ELASTIC_ATTEMPT_S, _start_attempts
    from palm_platform.ray.launch_spec import LaunchSpec

    def spec(shape, window_s, limit, restarts):
        return LaunchSpec(shape=shape, run_name="t", storage_path="/tmp", max_failures=restarts,
                          feasibility_timeout_s=window_s, controller_failure_limit=limit)

    fixed = SliceShape(2, 2, 4)
    assert _start_attempts(spec(fixed, 60, 1, 3)) == (60, 1)
    elastic = SliceShape(2, 2, 4, min_pods=1)
    attempt_s, limit = _start_attempts(spec(elastic, 60, 1, 3))
    assert attempt_s == ELASTIC_ATTEMPT_S < 60
    # every allowed restart (3) may spend the whole 60 s window, in 20 s attempts
    assert limit * attempt_s == 3 * 60
    # a shorter window is one attempt
    assert _start_attempts(spec(elastic, 10, 1, 2)) == (10, 2)


def test_returned_pods_give_one_notice_once_this_launch_trains_on_fewer(tmp_path):
    """The grow-back monitor (ray/resize.py): no notice before this launch trained a step, nor
    for one poll of a larger count (a removed host may still be listed alive), nor when the
    group already uses every slice; then exactly one, with the counts."""
    import json

    from palm_platform.ray.resize import GrowBackMonitor, intact_pods
    from palm_platform.run_dir import RunDir

    shape = SliceShape(2, 1, 4, "2x2x1", min_pods=1)
    nodes, notices = [_tpu_node(0)], []
    metrics = RunDir(tmp_path).metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)

    def step(number: int, pods: int, time: float) -> None:
        with metrics.open("a") as f:
            f.write(json.dumps({"kind": "step", "step": number, "pods": pods, "time": time}) + "\n")

    monitor = GrowBackMonitor(shape, tmp_path, since_unix=100.0,
                              notice=lambda *counts: notices.append(counts), poll_s=1,
                              nodes=lambda: nodes)
    step(7, 2, time=90.0)  # the previous launch's step, on 2 pods
    assert intact_pods(nodes, shape) == 1 and not monitor.check()
    step(8, 1, time=101.0)  # this launch, on the pod left
    assert not monitor.check()
    nodes.append(_tpu_node(1))  # pod 1 back
    assert intact_pods(nodes, shape) == 2
    assert not monitor.check() and not notices  # once is not yet twice in a row
    assert monitor.check() and monitor.check()
    assert notices == [(2, 1)]
    grown = GrowBackMonitor(shape, tmp_path, since_unix=100.0, notice=notices.append, poll_s=1,
                            nodes=lambda: nodes)
    step(9, 2, time=102.0)  # the group trains on both pods: nothing to do
    assert not grown.check() and not grown.check() and notices == [(2, 1)]


def test_a_shrink_from_an_agreed_save_is_a_planned_removal():
    """The checkpoint item says whether its step was the hosts' agreed step of a notice
    (CheckpointHook: `agreed`), which tells a drained pod from a lost one."""
    from palm_platform.supervise.supervision import Supervision
    from palm_platform.train.recovery import resize_cause

    assert resize_cause(2, 1, {"pods": 2, "agreed": True}) == "pod removed (planned)"
    assert resize_cause(2, 1, {"pods": 2}) == "pod lost"
    assert resize_cause(1, 2, {"pods": 1, "agreed": True}) == "pod returned"
    from palm_platform.supervise.config import SpikeConfig

    supervision = Supervision.new(SpikeConfig(), Path("ledger.json"), writes=False)
    assert resize_cause(2, 1, supervision.checkpoint_item(2, agreed=True)) == (
        "pod removed (planned)")
    assert resize_cause(2, 1, supervision.checkpoint_item(2)) == "pod lost"


def test_a_cluster_poller_checks_until_done_and_survives_a_failed_read():
    """The thread both elastic monitors run (ray/min_pods.py ClusterPoller)."""
    import threading

    from palm_platform.ray.min_pods import ClusterPoller

    class Counting(ClusterPoller):
        def __init__(self):
            self.poll_s, self._stop, self._thread, self.calls = 0.01, threading.Event(), None, 0

        def check(self) -> bool:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("the GCS did not answer")
            return self.calls >= 3

    with Counting() as poller:
        poller._thread.join(timeout=5)
    assert poller.calls == 3 and not poller._thread.is_alive()
