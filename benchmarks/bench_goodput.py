"""Goodput of the local job (2 pods x 2 hosts x 4 chips) with one host kill and one loss spike.

    python benchmarks/bench_goodput.py [--steps 50] [--kill-step 25] [--poison-step 45] [--dir DIR]
                                       [--runs 2]

Runs a copy of jobs/local-cpu.yaml with absolute run/checkpoint paths, W&B off, `--steps` steps, and
exactly two injected faults: kill_host (host 1) at `--kill-step` (after the step-20 checkpoint, so
Ray Train restarts the worker group from it) and poison_batches (2 batches) at `--poison-step` (late
enough that the spike detector has its min_history of good losses). It brings up `palm cluster up
--pods 2 --hosts-per-pod 2 --chips-per-host 4` in the work folder and tears it down in a finally.
Prints the goodput event (wall, productive, goodput, badput by cause), the restart/spike/rollback
counts, the recovery time (SIGKILL of host 1 -> the next completed step, and its ratio to the cold
start: launch -> first step of the same run), and the ledger's trace of the handled spike; fails
loudly if the spike was not detected. Takes ~6-8 minutes on 2 shared cores.

`--runs 2` runs the same job again on the same cluster, with fresh run and checkpoint
folders but the first run's compilation cache (`train.compile_cache`): the first run is
the cold cache, the second the warm one, and the goodput of both is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from palm_platform.metrics.events import describe_event
from palm_platform.metrics.sink import read_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.local_cluster import (  # noqa: E402
    BIN,
    driver_env,
    first_step_after_restart,
    kill_times,
    running_cluster,
)

ROOT = Path(__file__).resolve().parents[1]


def write_job(folder: Path, steps: int, kill_step: int, poison_step: int,
              compile_cache: Path | None = None) -> tuple[Path, dict]:
    spec = yaml.safe_load((ROOT / "jobs" / "local-cpu.yaml").read_text())
    if compile_cache is not None:
        spec["train"]["compile_cache"] = str(compile_cache)
    spec["run_dir"] = str(folder / "run")
    spec["checkpoint"]["directory"] = str(folder / "ckpt")
    spec["train"]["steps"] = steps
    spec["metrics"]["wandb_mode"] = "disabled"
    spec["faults"]["inject"] = [{"kind": "kill_host", "step": kill_step, "host": 1},
                                {"kind": "poison_batches", "step": poison_step, "steps": 2}]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec


def kill_to_next_step(run_dir: Path, records: list[dict]) -> tuple[float, int, int] | None:
    """(seconds from the kill_host fault's SIGKILL to the first step the restarted group
    completed, that step, the checkpoint step restored)."""
    kills = kill_times(run_dir)
    found = first_step_after_restart(records, kills[0]) if kills else None
    if found is None:
        return None
    restart, after = found
    return after["time"] - kills[0], after["step"], restart["step"]


def report(run_dir: Path, poison_step: int, kill_step: int, launched: float) -> int:
    records = read_records(run_dir)
    count = {
        k: sum(r["kind"] == k for r in records) for k in ("restart", "spike", "rollback", "skip")
    }
    goodput = [r for r in records if r["kind"] == "goodput"][-1]
    print(f"goodput {goodput['goodput']:.3f}  (productive {goodput['productive_s']:.1f} s of "
          f"wall {goodput['wall_s']:.1f} s)")
    print("badput by cause: " + ", ".join(
        f"{k[len('badput_'):-2]} {v:.1f} s" for k, v in sorted(goodput.items())
        if k.startswith("badput_") and isinstance(v, int | float)))
    if "cache_hits" in goodput:
        print(f"compilation cache (host 0, last attempt): {goodput['cache_hits']} hits, "
              f"{goodput['cache_misses']} misses")
    print("restarts {restart}, spikes {spike}, rollbacks {rollback}, skips {skip}".format(**count))
    recovery = kill_to_next_step(run_dir, records)
    if recovery is not None:
        seconds, resumed_step, restored = recovery
        cold = next(r["time"] for r in records if r["kind"] == "step") - launched
        print(
            f"recovery: host 1 SIGKILLed -> next completed step {resumed_step} in {seconds:.1f} s "
            f"(restored checkpoint step {restored}); cold start (launch -> first step) "
            f"{cold:.1f} s; ratio {seconds / cold:.2f}"
        )
    for r in records:  # the run's trace, as `palm status` and the log render it
        if r["kind"] in ("restart", "spike", "rollback", "skip", "stop", "startup", "compiled"):
            print(f"  {describe_event(r)}")
    if count["spike"] == 0 or count["rollback"] == 0:
        print(f"NO SPIKE HANDLED: poison at step {poison_step} was not detected. Fix: "
              f"--poison-step later (the detector needs min_history good losses first)")
        return 1
    if count["restart"] == 0:
        print(f"NO RESTART: the kill at step {kill_step} did not restart the worker group")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--kill-step", type=int, default=25)
    parser.add_argument("--poison-step", type=int, default=45)
    parser.add_argument("--runs", type=int, default=1, choices=(1, 2),
                        help="2: run again with the first run's compilation cache (warm)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures in order with the CLI's own output
    root = args.dir or Path(tempfile.mkdtemp(prefix="palm-bench-goodput-"))
    cache = root / "compile-cache" if args.runs > 1 else None
    jobs = [write_job(root / f"run{i}", args.steps, args.kill_step, args.poison_step, cache)
            for i in range(args.runs)]
    spec = jobs[0][1]
    spike_cfg = spec["faults"]["spike"]
    print(f"work folder {root}; {spec['name']}: {args.steps} steps, checkpoint every "
          f"{spec['checkpoint']['every_steps']}; kill host 1 at step {args.kill_step}; poison 2 "
          f"batches at step {args.poison_step} (spike window {spike_cfg.get('window')}, "
          f"min_history {spike_cfg.get('min_history', 10)})")

    status, start = 0, time.monotonic()
    with running_cluster(root / "cluster", pods=2, hosts_per_pod=2, chips_per_host=4) as state:
        print(f"cluster 2x2x4 up in {time.monotonic() - start:.1f} s")
        env = driver_env(state)
        for i, (job, _) in enumerate(jobs):
            label = ("cold" if i == 0 else "warm") + " compilation cache" if cache else "run"
            print(f"--- {label}")
            start, launched = time.monotonic(), time.time()
            done = subprocess.run([BIN / "palm", "run", str(job)], env=env, capture_output=True,
                                  text=True, timeout=1500)
            print(f"palm run: exit {done.returncode} after {time.monotonic() - start:.1f} s")
            (job.parent / "palm-run.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
                return 1
            status |= report(job.parent / "run" / spec["name"], args.poison_step, args.kill_step,
                             launched)
    return status


if __name__ == "__main__":
    sys.exit(main())
