"""Eval on the job's own hosts: a 2-host run's held-out eval, and `palm generate|eval
--cluster` (restore sharded over the job's mesh, SPMD on every host), each checked against
one process.

The conftest's local Ray cluster (1 pod x 2 hosts x 2 chips) and one 8-step 2-host run for the
module. Tolerances, stated once: held-out losses are logged rounded to 4 decimals and two runs
differ only in how gloo and one process order their float32 sums, so they agree to EVAL_ATOL nats;
greedy tokens are compared exactly; the corpus bits-per-byte (a sum of loglikelihoods) to BPB_RTOL.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from palm_platform.metrics.sink import read_records
from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multiprocess]

JOB = ROOT / "tests" / "jobs" / "ray-2host.yaml"
BIN = Path(sys.executable).parent
EVAL_ATOL = 2e-3
BPB_RTOL = 1e-4
PROMPTS = ["a", "def main(", "The quick brown fox jumps over"]  # three lengths in one batch


def write_job(folder: Path, **topology) -> Path:
    spec = yaml.safe_load(JOB.read_text())
    spec.update(run_dir=str(folder / "run"), metrics={"wandb_mode": "disabled"},
                eval={"every_steps": 4, "sequences": 8, "heldout_fraction": 0.05})
    spec["train"]["steps"] = 8
    spec["checkpoint"].update(directory=str(folder / "ckpt"), every_steps=4)
    spec["topology"].update(topology)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def env_for(state) -> dict:
    return {**os.environ, "RAY_ADDRESS": state.gcs_address, "PATH": f"{BIN}:{os.environ['PATH']}"}


def palm(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "palm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def evals(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")}
            for r in read_records(run_dir) if r.get("kind") == "eval"}


@pytest.fixture(scope="module")
def two_hosts(local_cluster, tmp_path_factory) -> tuple[Path, str]:
    """The 8-step job trained on the cluster's two hosts: (run folder, `palm run` output)."""
    folder = tmp_path_factory.mktemp("two-hosts")
    run = palm("run", write_job(folder), env=env_for(local_cluster))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return folder / "run" / "ray-2host", run.stdout + run.stderr


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The same job folded onto one host of 4 devices (the same pod x data x model mesh)."""
    folder = tmp_path_factory.mktemp("one-process")
    run = palm("run", "--direct", write_job(folder, hosts_per_pod=1, chips_per_host=4),
               env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return folder / "run" / "ray-2host"


def test_two_hosts_held_out_losses_equal_one_process_and_compile_once_per_host(
    two_hosts, one_process
):
    run_dir, _ = two_hosts
    sharded, single = evals(run_dir), evals(one_process)
    assert sorted(sharded) == sorted(single) == [4, 8]
    for step, fields in sharded.items():
        assert fields.keys() == single[step].keys() and any(k.endswith("/loss") for k in fields)
        for key, value in fields.items():
            assert abs(value - single[step][key]) <= EVAL_ATOL, (
                step,
                key,
                value,
                single[step][key],
            )
    # host 0 says it compiled once; any host that compiled more than once would say so too
    # (the workers' log lines go to the run's workers.log, not to the terminal)
    from palm_platform.ray.worker_output import LOG_FILE

    logged = (run_dir / "logs" / LOG_FILE).read_text()
    compiled = re.findall(r"host (\d)/2: held-out eval step compiled (\d+) time", logged)
    assert compiled == [("0", "1")], logged[-3000:]


def test_generate_on_the_cluster_gives_the_single_process_tokens(local_cluster, two_hosts):
    run_dir, _ = two_hosts
    args = ["generate", run_dir, "--max-new-tokens", "12"] + [
        a for p in PROMPTS for a in ("--prompt", p)
    ]
    alone = palm(*args, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    sharded = palm(*args, "--cluster", env=env_for(local_cluster))
    assert alone.returncode == 0 and sharded.returncode == 0, (
        sharded.stdout[-2000:] + sharded.stderr[-3000:]
    )
    # Ray forwards the workers' log lines to the driver's stdout, coloured "(RayTrainWorker ...)".
    plain = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in sharded.stdout.splitlines())
    texts = [line for line in plain if line and not line.startswith("(")]
    assert texts == alone.stdout.splitlines() and len(texts) == 2 * len(PROMPTS)
    assert "step 8" in sharded.stderr and "KV cache" in sharded.stderr


def test_eval_on_the_cluster_gives_the_single_process_loglikelihoods(
    local_cluster, two_hosts, tmp_path
):
    run_dir, _ = two_hosts
    args = [
        "eval",
        run_dir,
        "--tasks",
        "palm_corpus_ppl,palm_cloze",
        "--limit",
        "6",
        "--batch-size",
        "4",
    ]
    alone = palm(
        *args, "--output", tmp_path / "alone.json", env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    )
    sharded = palm(
        *args, "--cluster", "--output", tmp_path / "sharded.json", env=env_for(local_cluster)
    )
    assert alone.returncode == 0 and sharded.returncode == 0, (
        sharded.stdout[-2000:] + sharded.stderr[-3000:]
    )
    one, many = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("alone", "sharded"))
    assert many["run"]["step"] == one["run"]["step"] == 8
    bpb = [r["results"]["palm_corpus_ppl"]["bits_per_byte,none"] for r in (one, many)]
    assert bpb[1] == pytest.approx(bpb[0], rel=BPB_RTOL)
    assert many["results"]["palm_cloze"]["acc,none"] == one["results"]["palm_cloze"]["acc,none"]
    assert "palm_corpus_ppl" in sharded.stdout  # the table, printed once by the driver
    assert sharded.stdout.count("palm_corpus_ppl") == alone.stdout.count("palm_corpus_ppl")
