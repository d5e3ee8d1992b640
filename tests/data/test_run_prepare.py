"""`palm run`'s data step (ray/prepare_first.py): a store that is not current is prepared on
the cluster first; a cluster that cannot run the prepare job is one line and exit 2 with
the command to run instead."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Attached to a real Ray instance without a CPU, as `palm run` is after connecting.
_NO_CPU_CLUSTER = """
import sys
from pathlib import Path

import ray

ray.init(num_cpus=0, include_dashboard=False, _node_ip_address="127.0.0.1",
         logging_level="ERROR")
from palm_platform.job import load_job
from palm_platform.ray.prepare_first import prepare_if_needed

code = prepare_if_needed(load_job(sys.argv[1]), sys.argv[1], Path(sys.argv[2]),
                         address=ray.get_runtime_context().gcs_address, on_cluster=True)
ray.shutdown()
sys.exit(code)
"""


def _job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "no-cpu", "model": {"preset": "palm-tiny"},
        "topology": {"pods": 1, "hosts_per_pod": 1, "chips_per_host": 4,
                     "ici_topology": "2x2x1", "local": True},
        "train": {"steps": 2, "seq_len": 32, "batch_schedule": [{"sequences": 4}]},
        "checkpoint": {"directory": "ckpt"}, "data": {"store": "store"}, "run_dir": "runs",
    }))
    return path


@pytest.mark.slow
@pytest.mark.ray
def test_a_cluster_without_cpu_is_refused_with_the_prepare_command(tmp_path):
    job = _job(tmp_path)
    out = subprocess.run([sys.executable, "-c", _NO_CPU_CLUSTER, str(job), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "no CPU to prepare it on" in line and f"palm data prepare {job} --address" in line
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "store").exists()  # nothing written
