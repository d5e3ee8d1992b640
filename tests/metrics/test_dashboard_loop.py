"""The real train loop, W&B offline, through a spike (rollback) and a crash (restart): every
step it trained is in W&B's files, and the workspace's panels name keys it logged."""

import re
import shutil
from pathlib import Path

import pytest
from test_dashboard_sink import WAIT_S, wandb_env

from palm_platform.hook_protocol import Hook, StepInfo
from palm_platform.job import load_job
from palm_platform.metrics.sink import read_records
from palm_platform.metrics.wandb import keys
from palm_platform.metrics.wandb.offline import read_job_runs
from palm_platform.metrics.wandb.workspace import build_workspace, panel_metrics
from palm_platform.supervise.config import FaultInjection
from palm_platform.train.loop import Trainer
from tests.support.paths import TEST_JOBS

JOB = TEST_JOBS / "loop-2pod.yaml"
POISON = {"kind": "poison_batches", "step": 25, "steps": 2}
CRASH_AT = 33  # after the rollback's replay; the newest checkpoint is then step 30


class Crash(RuntimeError):
    pass


class CrashAt(Hook):
    """Fails the run after `step` is read, as a lost host would."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, info: StepInfo) -> None:
        if info.step == self.step:
            raise Crash(f"simulated host failure at step {self.step}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wandb-loop")
    shutil.copy(JOB, folder / "job.yaml")
    job = load_job(folder / "job.yaml")
    job = job.model_copy(update={
        "faults": job.faults.model_copy(update={"inject": [FaultInjection(**POISON)]}),
        "metrics": job.metrics.model_copy(
            update={"wandb_mode": "offline", "check_pods_identical": False}),
    })
    with pytest.MonkeyPatch.context() as env:
        wandb_env(env)
        for attempt, hooks in ((0, (CrashAt(CRASH_AT),)), (1, ())):
            trainer = Trainer(job, Path(job.run_dir), attempt=attempt, hooks=hooks)
            try:
                trainer.run()
            except Crash:
                pass
            finally:
                trainer.close()
    return job, read_records(Path(job.run_dir)), read_job_runs(Path(job.run_dir), wait_s=WAIT_S)


@pytest.mark.slow
def test_loop_logs_every_trained_step_to_wandb(trained):
    job, records, runs = trained
    trained_steps = [r["step"] for r in records if r["kind"] == "step"]
    assert {"rollback", "restart"} <= {r["kind"] for r in records}
    assert len(trained_steps) > job.train.steps  # replays after the rollback and the restart
    logged = [row[keys.STEP_METRIC] for run in runs for row in run.history if "train/loss" in row]
    assert logged == trained_steps
    assert len(runs) == 2 and len({run.run_id for run in runs}) == 1
    assert all(run.finished for run in runs)
    assert not [run for run in runs if "will be ignored" in run.output]


@pytest.mark.slow
def test_loop_alerts_once_per_spike_rollback_and_restart(trained):
    _, records, runs = trained
    kinds = [alert["title"].split()[0] for run in runs for alert in run.alerts]
    assert sorted(kinds) == sorted(r["kind"] for r in records
                                   if r["kind"] in ("spike", "rollback", "restart"))


@pytest.mark.slow
def test_wandb_config_is_the_resolved_job(trained):
    job, _, runs = trained
    config = {k: v for k, v in runs[0].config.items() if k != "_wandb"}
    assert config == job.model_dump(mode="json")


@pytest.mark.slow
def test_workspace_panels_show_keys_the_loop_logs(trained):
    _, _, runs = trained
    logged = {key for run in runs for row in run.history for key in row}
    badput = {key for key in logged if key.startswith(keys.BADPUT_GROUP + "/")}
    assert badput  # the loop's goodput event
    for section, title, metrics, regex in panel_metrics(build_workspace("palm-test", "me")):
        if regex:
            probe = logged | {keys.step_key("eval_loss")}  # eval keys: logged by the eval hook
            assert any(re.search(regex, key) for key in probe), (section, title, regex)
        elif set(metrics) & badput:  # a bar per cause: every cause the loop charged has one
            assert badput <= set(metrics), (title, badput - set(metrics))
        else:
            missing = set(metrics) - logged - {keys.marker_key("stop")}  # this run never stopped
            assert not missing, (section, title, missing)
