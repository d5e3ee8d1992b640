"""The project's W&B workspace, built from the same key table the sink logs with.

Loss and eval curves (spikes as dots on the loss), tokens/s and MFU, goodput and badput by
cause, spikes/rollbacks/restarts as markers with the replayed steps, and the cross-pod
bytes per step; every line plot against `train/step`, the sink's x-axis. Built with W&B's
`wandb-workspaces` library (imported here only, so the rest of palm never needs it).
"""

from __future__ import annotations

from typing import Any

from palm_platform.metrics.wandb import keys

DEFAULT_NAME = "palm training"


def _line(wr, title: str, y: list[str] | None = None, regex: str | None = None):
    if regex:
        return wr.LinePlot(title=title, x=keys.STEP_METRIC, metric_regex=regex)
    return wr.LinePlot(title=title, x=keys.STEP_METRIC, y=y)


def build_workspace(project: str, entity: str, name: str = DEFAULT_NAME) -> Any:
    """A `wandb_workspaces.workspaces.Workspace` (not saved: `.save()` needs a server)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    train = keys.STEP_KEYS
    markers = [keys.marker_key(kind) for kind in ("spike", "rollback", "restart", "stop")]
    sections = {
        "Loss": [
            _line(wr, "train loss (dots: spikes)",
                  [train["loss"], keys.event_field_key("spike", "loss")]),
            _line(wr, "eval", regex=r"^eval/.*"),
            _line(wr, "z-loss and gradient norm", [train["z_loss"], train["grad_norm"]]),
            _line(wr, "learning rate", [train["learning_rate"]]),
        ],
        "Throughput": [
            _line(wr, "tokens/s", [train["tokens_per_s"]]),
            _line(wr, "MFU", [train["mfu"]]),
            _line(wr, "step time (s) and batch size", [train["step_s"], train["batch_size"]]),
        ],
        "Goodput": [
            wr.ScalarChart(title="goodput (productive / wall time)", metric=keys.event_field_key("goodput", "goodput")),
            wr.BarPlot(title="badput by cause (s)",
                       metrics=[keys.badput_key(cause) for cause in keys.BADPUT_CAUSES]),
            _line(wr, "productive and wall time (s)",
                  [keys.event_field_key("goodput", f) for f in ("productive_s", "wall_s")]),
            _line(wr, "badput, every cause (s)", regex=rf"^{keys.BADPUT_GROUP}/.*"),
        ],
        "Spikes, rollbacks, restarts": [
            _line(wr, "spikes, rollbacks, restarts, stops (1 at the step)", markers),
            _line(wr, "replayed steps (1 = trained again) and attempt", [keys.REPLAYED, keys.ATTEMPT]),
            _line(wr, "batches skipped", [keys.event_field_key("skip", "batches")]),
        ],
        "Cross-pod": [
            wr.ScalarChart(title="cross-pod bytes per step",
                           metric=keys.event_field_key("start", "cross_pod_bytes_per_step")),
        ],
    }
    x_axis = ws.SectionPanelSettings(x_axis=keys.STEP_METRIC)
    return ws.Workspace(
        entity=entity, project=project, name=name,
        settings=ws.WorkspaceSettings(x_axis=keys.STEP_METRIC),
        sections=[ws.Section(name=title, panels=panels, is_open=True, panel_settings=x_axis)
                  for title, panels in sections.items()],
    )


def panel_metrics(workspace: Any) -> list[tuple[str, str, list[str], str | None]]:
    """(section, panel title, metric keys, metric regex) of every panel."""
    rows = []
    for section in workspace.sections:
        for panel in section.panels:
            metrics = list(getattr(panel, "y", None) or getattr(panel, "metrics", None) or [])
            if getattr(panel, "metric", None):
                metrics.append(panel.metric)
            rows.append((section.name, panel.title, [str(m) for m in metrics],
                         getattr(panel, "metric_regex", None)))
    return rows


def workspace_json(workspace: Any) -> str:
    """The view definition W&B's API receives on save."""
    return workspace._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=1)
