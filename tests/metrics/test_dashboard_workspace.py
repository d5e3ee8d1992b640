"""`palm wandb workspace`: the workspace definition builds offline, plots against the sink's
x-axis, and every panel names a key the sink really logs (read back from W&B's files)."""

import json
import re

import pytest
from test_dashboard_sink import WAIT_S, drive, wandb_env

from palm_platform.cli import main as palm
from palm_platform.metrics.wandb import keys
from palm_platform.metrics.wandb.offline import read_job_runs
from palm_platform.metrics.wandb.workspace import build_workspace, panel_metrics, workspace_json


@pytest.fixture(scope="module")
def logged_keys(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wandb") / "demo"
    with pytest.MonkeyPatch.context() as env:
        wandb_env(env)
        drive(run_dir)
    return {
        key for run in read_job_runs(run_dir, wait_s=WAIT_S) for row in run.history for key in row
    }


def test_every_panel_names_keys_the_sink_logs(logged_keys):
    badput = {key for key in logged_keys if key.startswith(keys.BADPUT_GROUP + "/")}
    panels = panel_metrics(build_workspace("palm-test", "me"))
    assert {section for section, *_ in panels} == {
        "Loss", "Throughput", "Goodput", "Spikes, rollbacks, restarts", "Cross-pod"}
    for _section, title, metrics, regex in panels:
        if regex:
            assert any(re.search(regex, key) for key in logged_keys), (title, regex)
        elif set(metrics) & badput:  # one bar per cause
            assert badput <= set(metrics) and all(m.startswith(keys.BADPUT_GROUP) for m in metrics)
        else:
            assert metrics and not set(metrics) - logged_keys - {keys.marker_key("stop")}, (
                title,
                metrics,
            )


def test_panels_cover_loss_eval_throughput_goodput_markers_and_cross_pod_bytes():
    shown = set()
    for _, _, metrics, regex in panel_metrics(build_workspace("palm-test", "me")):
        shown |= set(metrics) | ({regex} if regex else set())
    assert {"train/loss", "train/tokens_per_s", "train/mfu", "goodput/goodput", "events/spike",
            "events/rollback", "events/restart", "train/cross_pod_bytes_per_step"} <= shown
    assert any(re.search(r, "eval/loss") for r in shown if r.startswith("^"))


def test_line_plots_use_the_sinks_x_axis():
    workspace = build_workspace("palm-test", "me")
    assert workspace.settings.x_axis == keys.STEP_METRIC
    for section in workspace.sections:
        assert section.panel_settings.x_axis == keys.STEP_METRIC
        for panel in section.panels:
            if hasattr(panel, "x"):
                assert panel.x == keys.STEP_METRIC


def test_definition_serialises_for_the_api():
    workspace = build_workspace("palm-test", "me", "runs")
    spec = json.loads(workspace_json(workspace))
    assert (spec["entity"], spec["project"], spec["displayName"]) == ("me", "palm-test", "runs")
    text = json.dumps(spec)
    line_plots = sum(
        hasattr(panel, "x") for section in workspace.sections for panel in section.panels
    )
    assert text.count('"viewType": "Run History Line Plot"') == line_plots > 0
    assert '"xAxis": "train/step"' in text


def test_cli_writes_the_definition_without_network(tmp_path, capsys):
    out = tmp_path / "workspace.json"
    assert palm(["wandb", "workspace", "palm-test", "--entity", "me", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["project"] == "palm-test"
    assert palm(["wandb", "workspace", "palm-test", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "Loss: train loss (dots: spikes): train/loss, events/spike/loss" in printed


def test_cli_refuses_a_save_without_entity_or_key(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert palm(["wandb", "workspace", "palm-test"]) == 2
    assert "Fix: pass --entity" in capsys.readouterr().err
    assert palm(["wandb", "workspace", "palm-test", "--entity", "me"]) == 2
    assert "WANDB_API_KEY is not set" in capsys.readouterr().err
