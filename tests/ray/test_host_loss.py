"""A host lost after training started: one line with the step, the host and the resume."""

import time

from palm_platform.metrics.sink import MetricsSink
from palm_platform.ray.host_loss import host_loss_message, lost_tpu_hosts, trained_steps_since


def test_host_loss_after_training_names_the_step_the_host_and_the_resume(tmp_path):
    sink = MetricsSink(tmp_path, job_name="j", config={}, enabled=True, wandb_project=None,
                       wandb_mode="disabled")
    sink.log(3, {"loss": 5.0})
    launched_at = time.time()
    assert trained_steps_since(tmp_path, launched_at) is None  # an earlier launch's steps
    sink.log(7, {"loss": 4.0})
    sink.close()
    assert trained_steps_since(tmp_path, launched_at) == 7
    nodes = [  # the shape of `ray.nodes()` entries
        {"Alive": True, "NodeManagerAddress": "127.0.0.1",
         "Labels": {"ray.io/tpu-slice-name": "pod-0", "ray.io/tpu-worker-id": "0"}},
        {"Alive": False, "NodeManagerAddress": "127.0.0.1",
         "Labels": {"ray.io/tpu-slice-name": "pod-0", "ray.io/tpu-worker-id": "1"}},
        {"Alive": False, "NodeManagerAddress": "127.0.0.1", "Labels": {}},  # the head
    ]
    lost = lost_tpu_hosts(nodes)
    assert lost == ["pod-0/w1 (127.0.0.1)"]
    line = host_loss_message("j", 7, lost, "job needs 1 pods x 2 hosts;\n the cluster has 1")
    assert "\n" not in line and "trained to step 7" in line and "pod-0/w1" in line
    assert "Re-run the same command to resume" in line and "cannot start" not in line
