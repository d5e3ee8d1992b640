"""A Ray worker drops the event lines `palm run`'s live view prints, and keeps the rest."""

import logging

from palm_platform.metrics.sink import MetricsSink
from palm_platform.ray.worker import configure_logging


def test_worker_logs_only_the_events_the_driver_does_not_print(tmp_path, capsys):
    configure_logging()
    metrics = MetricsSink(tmp_path, job_name="t", config={}, enabled=True, wandb_project=None)
    metrics.event("restart", 5, attempt=1)  # the driver prints this sentence
    metrics.event("checkpoint_saved", 6, blocked_s=0.25)  # the driver only moves its bar
    logging.getLogger("palm").info("step 6/12 loss 7.1")  # not an event: kept
    err = capsys.readouterr().err
    assert "worker group restarted" not in err
    assert "step 6: checkpoint saved (the loop waited 0.25 s)" in err
    assert "step 6/12 loss 7.1" in err


def _printed(lines: list[str]) -> list[str]:
    """What Ray's driver-side deduplicator lets through of a worker's lines."""
    from ray._private.ray_logging import stdout_deduplicator

    import palm_platform.ray.worker_output  # noqa: F401 - sets the pattern when imported

    return [line for batch in stdout_deduplicator.deduplicate(
        {"ip": "127.0.0.1", "pid": 1, "lines": lines}) for line in batch["lines"]]


def test_the_driver_drops_gloo_connection_lines_whole_or_torn_and_keeps_ours():
    gloo = (
        "[Gloo] Rank 2 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3"
    )
    ours = ["2026-12-01 21:33:24,258 palm step 4/35 loss 7.1 tokens/s 2000 mfu 0.25%",
            "2026-12-01 21:33:25,001 palm host 2/4: lost a peer during step 25 (gloo: Read error)"]
    torn = [gloo[:30] + gloo, "1 peer ranks. Expected number of connected peer ranks is : 1",
            "4 is connected to 7 peer ranks. Expected number", ""]
    assert _printed([gloo, *torn, *ours]) == ours


def test_a_users_own_skip_pattern_is_kept(monkeypatch):
    from palm_platform.ray.worker_output import drop_never_printed_lines

    monkeypatch.setenv("RAY_DEDUP_LOGS_SKIP_REGEX", "my noise")
    try:
        drop_never_printed_lines()
        assert _printed(["my noise here", "[Gloo] Rank 0 is connected", "kept"]) == ["kept"]
    finally:
        monkeypatch.delenv("RAY_DEDUP_LOGS_SKIP_REGEX")
        drop_never_printed_lines()  # back to ours alone for the rest of the session
