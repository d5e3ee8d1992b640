"""The W&B side of the metrics sink, read back from W&B's own offline files.

One job is driven through MetricsSink as the train loop drives it: 45 steps, a spike at 45,
a rollback to 30 and ten replayed steps, then a restart (a new process) from the checkpoint
at 35 that trains to 50. Every step it trained must be in W&B's files, against train/step.
"""

import json
from pathlib import Path

import pytest

from palm_platform.metrics.sink import MetricsSink, read_records
from palm_platform.metrics.wandb import keys
from palm_platform.metrics.wandb.offline import read_job_runs
from palm_platform.metrics.wandb.sink import WandbWriter, scan_metrics_file

FAKE_KEY = "palmtest" + "0123456789abcdef" * 2 + "abcdefgh"  # 40 characters, like a real key
SPIKE_STEP, ROLLBACK_TO, REPLAY_END, RESTORED, LAST = 45, 30, 40, 35, 50
WAIT_S = 60  # for wandb-core to write a finished run's file (it does so after finish returns)


def wandb_env(env: pytest.MonkeyPatch) -> None:
    """A fake API key (it must never be written), and W&B's console captured into its run
    file whatever pytest does with stderr (its "auto" mode misses it under `pytest -s`)."""
    env.setenv("WANDB_API_KEY", FAKE_KEY)
    env.setenv("WANDB_CONSOLE", "wrap_raw")


def step_metrics(step: int, attempt: int) -> dict:
    return {"loss": 5.0 - 0.05 * step + attempt, "z_loss": 1e-3, "grad_norm": 1.0,
            "learning_rate": 1e-2, "tokens": 128, "step_s": 0.1, "tokens_per_s": 1280.0,
            "batch_size": 2, "mfu": 0.31, "compiled": step == 1, "eval_loss": 4.0}


def open_sink(run_dir: Path, replay: str = "xaxis") -> MetricsSink:
    return MetricsSink(
        run_dir,
        job_name="demo",
        config={"name": "demo", "metrics": {"wandb_replay": replay}},
        enabled=True,
        wandb_project="palm-test",
        wandb_mode="offline",
    )


def drive(run_dir: Path, replay: str = "xaxis") -> None:
    """The loop's sequence of calls across a rollback and a restart."""
    sink = open_sink(run_dir, replay)
    sink.event("start", 0, attempt=0, hosts=1, devices=4, cross_pod_bytes_per_step=4096)
    for step in range(1, SPIKE_STEP + 1):
        sink.log(step, step_metrics(step, 0))
    sink.event(
        "spike", SPIKE_STEP, alert=True, loss=9.5, rule="zscore", limit=6.0, description="z 8"
    )
    sink.event("rollback", SPIKE_STEP, alert=True, to_step=ROLLBACK_TO, note="")
    sink.event("skip", SPIKE_STEP, first_sequence=60, end_sequence=90, batches=15)
    for step in range(ROLLBACK_TO + 1, REPLAY_END + 1):
        sink.log(step, step_metrics(step, 0))
    sink.close()  # the worker group dies; Ray starts attempt 1 in a new process
    sink = open_sink(run_dir, replay)
    sink.event("checkpoint_restored", RESTORED, attempt=1)
    sink.event("restart", RESTORED, attempt=1, alert=True)
    for step in range(RESTORED + 1, LAST + 1):
        sink.log(step, step_metrics(step, 1))
    sink.event("goodput", LAST, wall_s=20.0, productive_s=15.0, goodput=0.75,
               badput_compile_s=2.0, badput_recomputation_s=2.5, badput_restart_s=0.5)
    sink.close()


@pytest.fixture(scope="module")
def job_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wandb") / "demo"
    with pytest.MonkeyPatch.context() as env:
        wandb_env(env)
        drive(run_dir)
    return run_dir, read_job_runs(run_dir, wait_s=WAIT_S), read_records(run_dir)


def history(runs) -> list[dict]:
    return [row for run in runs for row in run.history]


def test_every_trained_step_reaches_wandb_in_order_of_training(job_run):
    _, runs, records = job_run
    trained = [r["step"] for r in records if r["kind"] == "step"]
    logged = [row[keys.STEP_METRIC] for row in history(runs) if "train/loss" in row]
    assert logged == trained
    assert len(trained) == SPIKE_STEP + (REPLAY_END - ROLLBACK_TO) + (LAST - RESTORED)


def test_restart_resumes_the_same_wandb_run_and_no_step_is_ignored(job_run):
    _, runs, _ = job_run
    assert len(runs) == 2 and all(run.finished for run in runs)  # one segment per process start
    assert runs[0].run_id == runs[1].run_id
    for run in runs:
        assert (
            "will be ignored" not in run.output and "less than the current step" not in run.output
        )


def test_wandb_step_only_grows_across_rollback_and_restart(job_run):
    _, runs, _ = job_run
    steps = [row["_step"] for row in history(runs)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_replayed_steps_are_flagged_and_carry_their_attempt(job_run):
    _, runs, _ = job_run
    rows = [row for row in history(runs) if "train/loss" in row]
    replayed = [(row[keys.STEP_METRIC], row[keys.ATTEMPT]) for row in rows if row[keys.REPLAYED]]
    after_rollback = [(s, 0) for s in range(ROLLBACK_TO + 1, REPLAY_END + 1)]
    after_restart = [(s, 1) for s in range(RESTORED + 1, SPIKE_STEP + 1)]
    assert replayed == after_rollback + after_restart


def test_rollback_and_restart_are_markers_at_their_step(job_run):
    _, runs, _ = job_run
    markers = {(kind, row[keys.STEP_METRIC]) for row in history(runs)
               for kind in ("spike", "rollback", "restart") if row.get(f"events/{kind}") == 1}
    assert markers == {("spike", SPIKE_STEP), ("rollback", SPIKE_STEP), ("restart", RESTORED)}
    spike_row = next(row for row in history(runs) if "events/spike" in row)
    assert spike_row["events/spike/loss"] == 9.5  # a point on the loss panel at the spike


def test_metric_names_are_grouped(job_run):
    _, runs, _ = job_run
    logged = {key for row in history(runs) for key in row if not key.startswith("_")}
    assert {
        "train/loss",
        "train/mfu",
        "train/tokens_per_s",
        "eval/loss",
        "goodput/goodput",
        "goodput/badput/recomputation_s",
        "events/rollback",
        "train/cross_pod_bytes_per_step",
    } <= logged
    assert all(key.split("/")[0] in ("train", "eval", "goodput", "events") for key in logged)


def test_everything_is_plotted_against_train_step(job_run):
    _, runs, _ = job_run
    for group in ("train", "eval", "goodput", "events"):
        assert runs[0].metrics[f"{group}/*"]["stepMetric"] == keys.STEP_METRIC
    assert all(keys.STEP_METRIC in row for row in history(runs))


def test_summaries_are_min_for_losses_and_last_for_goodput(job_run):
    _, runs, _ = job_run
    first = runs[0].summary
    first_losses = [row["train/loss"] for row in runs[0].history if "train/loss" in row]
    assert first["train/loss"]["min"] == pytest.approx(min(first_losses))
    assert first["train/loss"]["last"] == pytest.approx(first_losses[-1])
    assert runs[1].summary["goodput/goodput"] == {"last": 0.75}
    assert runs[0].summary["eval/loss"]["min"] == 4.0


def test_run_config_is_the_job(job_run):
    _, runs, _ = job_run
    assert runs[0].config["name"] == "demo"
    assert runs[0].config["metrics"] == {"wandb_replay": "xaxis"}


def test_alerts_once_per_event(job_run):
    _, runs, _ = job_run
    titles = [alert["title"] for run in runs for alert in run.alerts]
    assert titles == [f"spike at step {SPIKE_STEP} (attempt 0)",
                      f"rollback at step {SPIKE_STEP} (attempt 0)",
                      f"restart at step {RESTORED} (attempt 1)"]
    assert runs[0].alerts[0]["level"] == "WARN"


def test_api_key_is_never_written(job_run):
    run_dir, _, _ = job_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    assert not [p for p in files if FAKE_KEY.encode() in p.read_bytes()]


def test_only_process_zero_opens_a_wandb_run(tmp_path):
    sink = MetricsSink(tmp_path, job_name="demo", config={}, enabled=False,
                       wandb_project="palm-test", wandb_mode="offline")
    sink.event("spike", 3, alert=True, loss=9.0)
    sink.close()
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_scan_metrics_file_counts_lines_and_finds_the_highest_and_last_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "start", "step": 0}, {"kind": "step", "step": 7}, {"kind": "step", "step": 3},
             {"kind": "rollback", "step": 99}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert scan_metrics_file(path) == (4, 7, 3)
    assert scan_metrics_file(tmp_path / "missing.jsonl") == (0, 0, 0)


def test_rewind_and_fork_fall_back_to_xaxis_offline(tmp_path, caplog):
    writer = WandbWriter(tmp_path, run_id="demo-1", name="demo", config={}, project="palm-test",
                         entity=None, mode="offline", replay="rewind")
    try:
        assert writer.replay == "xaxis"
        assert "needs W&B online" in caplog.text
    finally:
        writer.finish()


def test_unknown_replay_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="wandb_replay"):
        WandbWriter(tmp_path, run_id="demo-1", name="demo", config={}, project="palm-test",
                    entity=None, mode="offline", replay="sideways")


@pytest.fixture(params=["rewind", "fork"])
def server_replay(request, tmp_path, monkeypatch):
    """The online policies, recorded offline: the run files hold what a server is asked to do."""
    import palm_platform.metrics.wandb.sink as sink_module

    monkeypatch.setattr(sink_module, "NEEDS_SERVER", set())
    wandb_env(monkeypatch)
    drive(tmp_path / "demo", request.param)
    return request.param, read_job_runs(tmp_path / "demo", wait_s=WAIT_S)


def test_rewind_and_fork_reopen_the_run_before_each_replayed_step(server_replay):
    policy, runs = server_replay
    base = runs[0].run_id
    # attempt 0, reopened at the rollback target; attempt 1, reopened at the restored checkpoint
    assert len(runs) == 4
    moments = [run.resume_from if policy == "rewind" else run.fork_from for run in runs]
    assert moments[0] == "" and moments[2] == ""  # a process start resumes the current run
    assert moments[1] == f"{base}?_step={ROLLBACK_TO}"
    if policy == "rewind":
        assert {run.run_id for run in runs} == {base}
        assert moments[3] == f"{base}?_step={RESTORED}"
    else:
        assert [run.run_id for run in runs] == [
            base,
            f"{base}-fork1",
            f"{base}-fork1",
            f"{base}-fork2",
        ]
        assert moments[3] == f"{base}-fork1?_step={RESTORED}"
    for run in runs:  # W&B's step is the train step, and only grows inside a segment
        steps = [row["_step"] for row in run.history]
        assert steps == sorted(steps) and "will be ignored" not in run.output
        assert all(
            row["_step"] == row[keys.STEP_METRIC] for row in run.history if "train/loss" in row
        )


def test_rewind_and_fork_keep_the_markers_on_the_first_replayed_step(server_replay):
    _, runs = server_replay
    first_replayed = next(row for row in runs[1].history if "train/loss" in row)
    assert first_replayed[keys.STEP_METRIC] == ROLLBACK_TO + 1
    assert first_replayed["events/rollback"] == 1 and first_replayed["events/spike/loss"] == 9.5
    after_restart = next(row for row in runs[3].history if "train/loss" in row)
    assert after_restart[keys.STEP_METRIC] == RESTORED + 1 and after_restart["events/restart"] == 1


def test_wandb_itself_drops_replayed_steps_logged_at_their_own_step(tmp_path, monkeypatch):
    """Why the x-axis exists (wandb 0.31, offline): the old `log(step=train_step)` loses the
    replay. (W&B's "will be ignored" warning reaches the run file only when its console
    capture wins a race with finish(), so the rows, not the warning, are the evidence.)"""
    import wandb

    wandb_env(monkeypatch)
    run = wandb.init(project="palm-test", id="plain", mode="offline", dir=str(tmp_path),
                     settings=wandb.Settings(silent=True))
    for step in range(1, SPIKE_STEP + 1):
        run.log({"loss": 1.0}, step=step)
    for step in range(ROLLBACK_TO + 1, REPLAY_END + 1):
        run.log({"loss": 2.0}, step=step)  # the replay after the rollback
    run.finish()
    (plain,) = read_job_runs(tmp_path, wait_s=WAIT_S)
    assert plain.finished
    assert [row["_step"] for row in plain.history] == list(range(1, SPIKE_STEP + 1))
    assert {row["loss"] for row in plain.history} == {1.0}  # not one replayed value kept


def test_mapping_table_groups_loop_and_eval_names():
    assert keys.step_key("loss") == "train/loss" and keys.step_key("mfu") == "train/mfu"
    assert (
        keys.step_key("eval_loss") == "eval/loss"
        and keys.step_key("new_metric") == "train/new_metric"
    )
    assert keys.event_keys("eval", {"hellaswag_acc": 0.3, "task": "hellaswag"}) == {
        "eval/hellaswag_acc": 0.3
    }
    # The held-out eval hook's fields are already grouped (platform/train/heldout.py).
    assert keys.event_keys("eval", {"eval/code/loss": 4.6, "eval/code/bpb": 3.1}) == {
        "eval/code/loss": 4.6, "eval/code/bpb": 3.1}
    assert keys.event_keys("goodput", {"goodput": 0.9, "badput_data_s": 1.5}) == {
        "goodput/goodput": 0.9, "goodput/badput/data_s": 1.5}
    assert keys.event_keys("rollback", {"to_step": 30, "note": "x"}) == {
        "events/rollback": 1, "events/rollback/to_step": 30}
    assert [
        keys.summary_of(k)
        for k in ("eval/loss", "eval/hellaswag_acc", "goodput/wall_s", "train/mfu")
    ] == ["min,last", "max,last", "last", None]


def test_the_loop_never_waits_for_wandb_and_wandb_still_gets_every_row_in_order(
    tmp_path, monkeypatch
):
    # wandb's import and init take seconds on every start and restart: while they run, the
    # loop's calls return at once (the JSONL has them), and W&B gets them all afterwards.
    import threading

    import palm_platform.metrics.wandb.sink as sink_module

    init_may_finish = threading.Event()
    real_init = sink_module.WandbWriter.__init__

    def slow_init(self, *args, **kwargs):
        assert init_may_finish.wait(timeout=60)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(sink_module.WandbWriter, "__init__", slow_init)
    sink = open_sink(tmp_path)
    sink.event("start", 0, attempt=0, hosts=1, devices=4, cross_pod_bytes_per_step=0)
    for step in range(1, 6):
        sink.log(step, step_metrics(step, 0))
    assert [r["step"] for r in read_records(tmp_path)] == [0, 1, 2, 3, 4, 5]
    assert not (tmp_path / "wandb").exists()  # W&B has not even opened its run yet
    init_may_finish.set()
    sink.close()
    [run] = read_job_runs(tmp_path, wait_s=WAIT_S)
    assert [row[keys.STEP_METRIC] for row in run.history] == [0, 1, 2, 3, 4, 5]
