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
