"""Ctrl-C / SIGTERM on `palm run` (the parts that need no cluster; the full stop-and-resume
is in test_hardening_ray.py)."""

import signal
import subprocess
import sys

import pytest

from palm_platform.metrics.sink import MetricsSink
from palm_platform.ray.interrupt import exit_code, last_logged_step, resume_message

DRIVER = """
import sys, time
from pathlib import Path
from palm_platform.ray.interrupt import InterruptHandler
with InterruptHandler("stop/test/0", Path(sys.argv[1]), grace_s=30):
    print("ready", flush=True)
    time.sleep(60)
"""


def run_dir_at_step(tmp_path, step: int):
    sink = MetricsSink(tmp_path, job_name="j", config={}, enabled=True, wandb_project=None,
                       wandb_mode="disabled")
    for s in range(1, step + 1):
        sink.log(s, {"loss": 3.0})
    sink.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "step", "ste')  # a torn last line of a running job
    return tmp_path


def test_last_logged_step_skips_a_torn_line(tmp_path):
    assert last_logged_step(tmp_path) is None
    assert last_logged_step(run_dir_at_step(tmp_path, 7)) == 7
    assert resume_message(tmp_path) == "interrupted at step 7; re-run the same command to resume"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_without_a_reachable_cluster_exits_128_plus_signal_with_the_resume_line(
        tmp_path, signum):
    run_dir_at_step(tmp_path, 7)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert driver.stdout.readline().strip() == "ready"
    driver.send_signal(signum)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == exit_code(signum) == 128 + signum
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("could not reach the cluster") and last.endswith(
        "interrupted at step 7; re-run the same command to resume"), stderr
    assert "Traceback" not in stderr
