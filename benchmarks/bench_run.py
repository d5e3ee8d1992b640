"""`palm run` on the local Ray cluster vs the same train loop in one process; restart vs cold start.

    python benchmarks/bench_run.py [--steps 30] [--kill-after 6] [--dir DIR]

(a) One job (palm-tiny, seq 128, 8 sequences/step, 1 pod x 1 host x 4 chips, topology 2x2x1)
run twice: `palm run --direct` (Trainer in the CLI process, no Ray) and `palm run` on a
`palm cluster up --pods 1 --hosts-per-pod 1 --chips-per-host 4` cluster. Steady-state steps/s
counts only records with "compiled": false, as 1 / the mean gap between consecutive step
records (the whole loop: data, step, metrics, async checkpoint) and as 1 / mean step_s (the
jitted step alone). The Ray/direct ratio is the cost of running under Ray Train.
(b) On a 1 pod x 2 hosts x 2 chips cluster, a fresh `palm run`; once step `--kill-after` is
in the metrics file, one RayTrainWorker is SIGKILLed by PID. Printed: cold start (launch ->
first step record) and recovery (kill -> first step record after it), and their ratio.
Every cluster is torn down with `palm cluster down --dir` in a finally. Takes ~3-4 minutes
on 2 shared cores (two cluster start-ups of ~15 s each).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from palm_platform.metrics import read_records
from palm_platform.ray import cluster

BIN = Path(sys.executable).parent


def job_spec(folder: Path, name: str, hosts: int, chips: int, steps: int) -> Path:
    spec = {"name": name, "model": {"preset": "palm-tiny"}, "mesh": {"model": 2},
            "topology": {"pods": 1, "hosts_per_pod": hosts, "chips_per_host": chips,
                         "ici_topology": "2x2x1", "local": True},
            "train": {"steps": steps, "seq_len": 128, "batch_schedule": [{"sequences": 8}]},
            "optimizer": {"constant_steps": 10}, "metrics": {"wandb_mode": "disabled"},
            "checkpoint": {"directory": str(folder / "ckpt"), "every_steps": 4, "keep_last": 2},
            "faults": {"max_restarts": 3, "hang_timeout_s": 120, "init_timeout_s": 120},
            "run_dir": str(folder / "run")}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def steps_of(folder: Path, name: str) -> list[dict]:
    return [r for r in read_records(folder / "run" / name) if r["kind"] == "step"]


def steady_rates(steps: list[dict]) -> tuple[float, float, int]:
    """(loop steps/s, step-only steps/s, steps counted) over non-compile steps."""
    gaps = [b["time"] - a["time"] for a, b in zip(steps, steps[1:], strict=False) if not b["compiled"]]
    step_s = [r["step_s"] for r in steps if not r["compiled"]]
    return len(gaps) / sum(gaps), len(step_s) / sum(step_s), len(step_s)


def up(state_dir: Path, hosts: int, chips: int) -> dict:
    start = time.monotonic()
    subprocess.run([BIN / "palm", "cluster", "up", "--pods", "1", "--hosts-per-pod", str(hosts),
                    "--chips-per-host", str(chips), "--dir", str(state_dir)],
                   check=True, capture_output=True, text=True, timeout=300)
    print(f"  cluster 1x{hosts}x{chips} up in {time.monotonic() - start:.1f} s")
    state = cluster.load_state(cluster.state_path(state_dir))
    return {**os.environ, "RAY_ADDRESS": state.gcs_address, "PATH": f"{BIN}:{os.environ['PATH']}"}


def down(state_dir: Path) -> None:
    state = cluster.load_state(cluster.state_path(state_dir))
    subprocess.run([BIN / "palm", "cluster", "down", "--dir", str(state_dir)], timeout=120)
    if state is not None:
        shutil.rmtree(state.temp_dir, ignore_errors=True)


def run(job: Path, env: dict | None, *extra: str) -> None:
    done = subprocess.run([BIN / "palm", "run", *extra, str(job)], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"palm run {' '.join(extra)} {job} failed:\n{done.stderr[-3000:]}")


def train_workers(state_dir: Path) -> list[psutil.Process]:
    ours = {n.pid for n in cluster.load_state(cluster.state_path(state_dir)).nodes}
    return [p for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
            and any(q.pid in ours for q in p.parents())]


def kill_and_recover(root: Path, steps: int, kill_after: int) -> tuple[float, float]:
    """(cold start s, kill -> next step s) of one `palm run` on a 1x2x2 cluster."""
    job, state_dir = job_spec(root / "kill", "kill", 2, 2, steps), root / "cluster-2host"
    metrics = root / "kill" / "run" / "kill" / "metrics.jsonl"
    try:
        env = up(state_dir, 2, 2)
        launched = time.time()
        log = root / "kill" / "palm-run.log"  # a file, not a pipe nobody drains while we poll
        with log.open("w") as out:
            proc = subprocess.Popen([BIN / "palm", "run", str(job)], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        while not (metrics.exists() and any(r["step"] >= kill_after for r in steps_of(root / "kill", "kill"))):
            if proc.poll() is not None:
                raise RuntimeError(f"run ended before step {kill_after}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        victim = train_workers(state_dir)[-1]
        killed = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        if proc.wait(timeout=900) != 0:
            raise RuntimeError(f"killed run failed:\n{log.read_text()[-3000:]}")
    finally:
        down(state_dir)
    records = read_records(root / "kill" / "run" / "kill")
    first = next(r for r in records if r["kind"] == "step")
    after = next(r for r in records if r["kind"] == "step" and r["time"] > killed)
    restarts = sum(r["kind"] == "restart" for r in records)
    print(f"  killed worker pid {victim.pid} at step >= {kill_after}; restarts {restarts}; "
          f"resumed at step {after['step']} (compiled: {after['compiled']})")
    # Where a start and a restart spend their seconds (host 0's marks; see loop.py).
    for r in records:
        if r["kind"] in ("startup", "compiled"):
            spans = {k: v for k, v in r.items() if k not in ("kind", "time", "step")}
            print(f"  {r['kind']} at step {r['step']} ({r['time'] - killed:+.1f} s from the kill): {spans}")
    return first["time"] - launched, after["time"] - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--kill-after", type=int, default=6)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures in order with the CLI's own output
    root = args.dir or Path(tempfile.mkdtemp(prefix="palm-bench-run-"))
    print(f"work folder {root}")

    print(f"(a) 1 pod x 1 host x 4 chips, palm-tiny, seq 128, 8 sequences, {args.steps} steps")
    run(job_spec(root / "direct", "bench", 1, 4, args.steps), None, "--direct")
    state_dir = root / "cluster-1host"
    try:
        env = up(state_dir, 1, 4)
        run(job_spec(root / "ray", "bench", 1, 4, args.steps), env)
    finally:
        down(state_dir)
    direct = steady_rates(steps_of(root / "direct", "bench"))
    on_ray = steady_rates(steps_of(root / "ray", "bench"))
    for label, (loop, step, n) in (("direct", direct), ("palm run", on_ray)):
        print(f"  {label:9s} loop {loop:6.2f} steps/s   step alone {step:6.2f} steps/s   ({n} steps)")
    print(f"  ratio palm run / direct: loop {on_ray[0] / direct[0]:.3f}   "
          f"step alone {on_ray[1] / direct[1]:.3f}")

    print(f"(b) 1 pod x 2 hosts x 2 chips: kill one RayTrainWorker after step {args.kill_after}")
    cold_s, recover_s = kill_and_recover(root, max(args.steps // 2, args.kill_after + 6), args.kill_after)
    print(f"  cold start (palm run launch -> first step)  {cold_s:7.1f} s")
    print(f"  recovery (kill -> next completed step)       {recover_s:7.1f} s")
    print(f"  ratio recovery / cold start: {recover_s / cold_s:.3f}")


if __name__ == "__main__":
    main()
