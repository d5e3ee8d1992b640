"""`palm run` on the local Ray cluster vs the same train loop in one process; restart vs cold start.

    python benchmarks/bench_run.py [--steps 30] [--rounds 3] [--kill-after 6] [--dir DIR]
    python benchmarks/bench_run.py --restart-only     # (b) and (c) only: ~3 minutes

(a) One job (palm-tiny, seq 128, 8 sequences/step, 1 pod x 1 host x 4 chips, topology 2x2x1):
`palm run --direct` (Trainer in the CLI process, no Ray) once before any cluster exists, then
`--rounds` times `palm run --direct` and `palm run` on a `palm cluster up --pods 1
--hosts-per-pod 1 --chips-per-host 4` cluster, alternately, with the cluster up for both.
Steady-state steps/s counts only records with "compiled": false, as 1 / the mean gap between
consecutive step records (the whole loop: data, step, metrics, async checkpoint) and as 1 /
mean step_s (the jitted step alone). The median of the rounds' palm run / direct ratios is the
cost of running under Ray Train; direct with the cluster up / without is what the idle Ray
daemons (GCS, raylet, dashboard, log monitor) take from a 2-core machine, which TPU hosts
(hundreds of cores) do not feel.
(b) On a 1 pod x 2 hosts x 2 chips cluster, a fresh `palm run`; once step `--kill-after` is
in the metrics file, one RayTrainWorker is SIGKILLed by PID. Printed: cold start (launch ->
first step record) and recovery (kill -> first step record after it), and their ratio.
(c) Before (b), on the same cluster: `palm run` of a 2-step job to step 1's record, first with
an empty compilation cache (the first-ever start), then in a new run folder with it warm.
Every cluster is torn down (`cluster.down`, tests/support/local_cluster.running_cluster) on
exit. Takes ~4-5 minutes on 2 shared cores (two cluster start-ups of ~15 s each).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from palm_platform.cluster.state import ClusterState
from palm_platform.metrics.sink import read_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.local_cluster import (  # noqa: E402
    BIN,
    driver_env,
    first_step_after_restart,
    kill_a_train_worker_after_step,
    running_cluster,
)


def job_spec(folder: Path, name: str, hosts: int, chips: int, steps: int,
             compile_cache: Path | None = None) -> Path:
    spec = {"name": name, "model": {"preset": "palm-tiny"}, "mesh": {"model": 2},
            "topology": {"pods": 1, "hosts_per_pod": hosts, "chips_per_host": chips,
                         "ici_topology": "2x2x1", "local": True},
            "train": {"steps": steps, "seq_len": 128, "batch_schedule": [{"sequences": 8}]},
            "optimizer": {"constant_steps": 10}, "metrics": {"wandb_mode": "disabled"},
            "checkpoint": {"directory": str(folder / "ckpt"), "every_steps": 4, "keep_last": 2},
            "faults": {"max_restarts": 3, "hang_timeout_s": 120, "init_timeout_s": 120},
            "run_dir": str(folder / "run")}
    if compile_cache is not None:
        spec["train"]["compile_cache"] = str(compile_cache)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def steps_of(folder: Path, name: str) -> list[dict]:
    return [r for r in read_records(folder / "run" / name) if r["kind"] == "step"]


def steady_rates(steps: list[dict]) -> tuple[float, float, int]:
    """(loop steps/s, step-only steps/s, steps counted) over non-compile steps."""
    gaps = [b["time"] - a["time"] for a, b in zip(steps, steps[1:], strict=False)
            if not b["compiled"]]
    step_s = [r["step_s"] for r in steps if not r["compiled"]]
    return len(gaps) / sum(gaps), len(step_s) / sum(step_s), len(step_s)


@contextmanager
def timed_cluster(state_dir: Path, hosts: int, chips: int) -> Iterator[ClusterState]:
    start = time.monotonic()
    with running_cluster(state_dir, pods=1, hosts_per_pod=hosts, chips_per_host=chips) as state:
        print(f"  cluster 1x{hosts}x{chips} up in {time.monotonic() - start:.1f} s")
        yield state


def run(job: Path, env: dict | None, *extra: str) -> None:
    done = subprocess.run([BIN / "palm", "run", *extra, str(job)], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"palm run {' '.join(extra)} {job} failed:\n{done.stderr[-3000:]}")


def launch_to_step_1(job: Path, name: str, state: ClusterState) -> tuple[float, dict]:
    """(seconds from `palm run` to step 1's record, the run's `startup` spans)."""
    launched = time.time()
    run(job, driver_env(state))
    records = read_records(job.parent / "run" / name)
    first = next(r for r in records if r["kind"] == "step" and r["step"] == 1)
    startup = next(r for r in records if r["kind"] == "startup")
    return first["time"] - launched, {k: v for k, v in startup.items()
                                      if k.endswith("_s") and isinstance(v, int | float)}


def cold_and_warm_start(root: Path, state: ClusterState) -> tuple[float, float]:
    """(c) `palm run` to step 1 on the 1x2x2 cluster already up: first with an empty
    compilation cache (the first-ever start), then a new run folder with that cache warm."""
    cache = root / "start-cache"
    cold_s, cold = launch_to_step_1(job_spec(root / "start-cold", "start", 2, 2, 2, cache),
                                    "start", state)
    warm_s, warm = launch_to_step_1(job_spec(root / "start-warm", "start", 2, 2, 2, cache),
                                    "start", state)
    for label, spans in (("cold", cold), ("warm", warm)):
        print(f"  {label} start spans (s): " + ", ".join(f"{k[:-2]} {v:.1f}"
                                                       for k, v in spans.items()))
    return cold_s, warm_s


def kill_and_recover(root: Path, steps: int, kill_after: int,
                     starts: bool = True) -> tuple[float, float]:
    """(cold start s, kill -> next step s) of one `palm run` on a 1x2x2 cluster."""
    job, state_dir = job_spec(root / "kill", "kill", 2, 2, steps), root / "cluster-2host"
    with timed_cluster(state_dir, 2, 2) as state:
        if starts:
            cold_s, warm_s = cold_and_warm_start(root, state)
            print(f"  (c) palm run -> step 1, cluster up: first-ever (cache cold) {cold_s:.1f} s,"
                  f" cache warm {warm_s:.1f} s (goal <= 15 s)")
        launched = time.time()
        log = root / "kill" / "palm-run.log"  # a file, not a pipe nobody drains while we poll
        with log.open("w") as out:
            proc = subprocess.Popen([BIN / "palm", "run", str(job)], env=driver_env(state),
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            victim = kill_a_train_worker_after_step(state, proc, root / "kill" / "run" / "kill",
                                                    kill_after, timeout_s=900)
        except RuntimeError as error:
            raise RuntimeError(f"{error}:\n{log.read_text()[-3000:]}") from None
        killed = time.time()
        if proc.wait(timeout=900) != 0:
            raise RuntimeError(f"killed run failed:\n{log.read_text()[-3000:]}")
    records = read_records(root / "kill" / "run" / "kill")
    first = next(r for r in records if r["kind"] == "step")
    _, after = first_step_after_restart(records, killed)
    restarts = sum(r["kind"] == "restart" for r in records)
    for r in records:  # the restart's own account, by cause (supervise/restart_account.py)
        if r["kind"] == "restart" and "recovery_s" in r:
            print("  restart record: " + ", ".join(f"{k} {v}" for k, v in r.items()
                                                   if k not in ("kind", "time", "alert")))
    print(f"  killed worker pid {victim.pid} at step >= {kill_after}; restarts {restarts}; "
          f"resumed at step {after['step']} (compiled: {after['compiled']})")
    # Where a start and a restart spend their seconds (host 0's marks; see loop.py).
    for r in records:
        if r["kind"] in ("startup", "compiled"):
            spans = {k: v for k, v in r.items() if k not in ("kind", "time", "step")}
            print(f"  {r['kind']} at step {r['step']} ({r['time'] - killed:+.1f} s from the kill): "
                  f"{spans}")
    return first["time"] - launched, after["time"] - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="direct/palm run pairs in (a)")
    parser.add_argument("--kill-after", type=int, default=6)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--restart-only", action="store_true",
                        help="only (b) and (c): the starts and the kill on the 1x2x2 cluster")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures in order with the CLI's own output
    root = args.dir or Path(tempfile.mkdtemp(prefix="palm-bench-run-"))
    print(f"work folder {root}")
    if args.restart_only:
        return restart_figures(root, args)

    print(f"(a) 1 pod x 1 host x 4 chips, palm-tiny, seq 128, 8 sequences, {args.steps} steps")

    def measured(folder: Path, env: dict | None, *extra: str) -> tuple[float, float, int]:
        run(job_spec(folder, "bench", 1, 4, args.steps), env, *extra)
        return steady_rates(steps_of(folder, "bench"))

    def show(label: str, rates: tuple[float, float, int]) -> None:
        print(f"  {label:26s} loop {rates[0]:6.2f} steps/s   step alone {rates[1]:6.2f} steps/s"
              f"   ({rates[2]} steps)")

    alone = measured(root / "direct-alone", None, "--direct")
    show("direct, no cluster", alone)
    loop_ratios, step_ratios, direct_loops = [], [], []
    with timed_cluster(root / "cluster-1host", 1, 4) as state:
        for k in range(args.rounds):
            direct = measured(root / f"direct-{k}", None, "--direct")
            on_ray = measured(root / f"ray-{k}", driver_env(state))
            show(f"round {k + 1}: direct", direct)
            show(f"round {k + 1}: palm run", on_ray)
            loop_ratios.append(on_ray[0] / direct[0])
            step_ratios.append(on_ray[1] / direct[1])
            direct_loops.append(direct[0])
    print(f"  ratio palm run / direct (median of {args.rounds} rounds, cluster up for both): "
          f"loop {statistics.median(loop_ratios):.3f} (rounds "
          f"{', '.join(f'{r:.3f}' for r in loop_ratios)})   "
          f"step alone {statistics.median(step_ratios):.3f}")
    print(f"  ratio direct with the idle cluster up / without: "
          f"{statistics.median(direct_loops) / alone[0]:.3f}")

    restart_figures(root, args)


def restart_figures(root: Path, args: argparse.Namespace) -> None:
    print(f"(b, c) 1 pod x 2 hosts x 2 chips: palm run to step 1 (cache cold, warm); kill one "
          f"RayTrainWorker after step {args.kill_after}")
    cold_s, recover_s = kill_and_recover(root, max(args.steps // 2, args.kill_after + 6),
                                         args.kill_after)
    print(f"  cold start (palm run launch -> first step)  {cold_s:7.1f} s")
    print(f"  recovery (kill -> next completed step)       {recover_s:7.1f} s")
    print(f"  ratio recovery / cold start: {recover_s / cold_s:.3f} (goal <= 0.3, <= 10 s)")


if __name__ == "__main__":
    main()
