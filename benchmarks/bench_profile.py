"""`palm profile` on the local 2 pods x 2 hosts x 4 chips job: what a capture costs, whether the
breakdown adds up, and the plan held against the measurement.

    flock /tmp/palm-heavy.lock python benchmarks/bench_profile.py [--steps 40] [--trace 5]

Brings up the local cluster (`palm cluster up`, 2 x 2 x 4), runs a copy of jobs/local-cpu.yaml
(no injected faults, no eval, one batch size, no checkpoint inside the timed steps, W&B off,
`profile.poll_every: 5`) with `palm run`, and once its host 0 listens asks
`palm profile RUN --steps N` (every host); after the run, `palm profile RUN --report --plan
--json` (the plan's compile would otherwise share the cores with the timed steps). From the
run's own step records:
- the traced steps' mean step_s over the untraced steps' median (goal: <= 1.10), and the
  untraced steps after the capture over those before it (goal: 1.00: the others cost nothing),
  and the poll steps (one broadcast each) over the other untraced steps;
- per host, the categories' sum over the trace's window (1 by construction) and the window over
  the loop's own step_s for the same steps (goal: within 5%);
- the plan for the run's 16 CPU devices against the measurement, per category, as ratios.
Compile steps (the first two) are left out of every median. Timings on a shared 2-core machine
are noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from palm_platform.metrics.sink import read_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.local_cluster import BIN, driver_env, running_cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLL_EVERY = 5


def write_job(folder: Path, steps: int) -> Path:
    spec = yaml.safe_load((ROOT / "jobs" / "local-cpu.yaml").read_text())
    spec.update(run_dir=str(folder / "run"), profile={"poll_every": POLL_EVERY})
    spec.pop("eval", None)
    spec["train"].update(steps=steps, batch_schedule=[{"sequences": 32}])
    spec["train"]["compile_cache"] = str(folder / "compile-cache")
    spec["checkpoint"].update(directory=str(folder / "ckpt"), every_steps=steps)
    spec["checkpoint"].pop("local", None)
    spec["faults"].pop("inject", None)
    spec["metrics"]["wandb_mode"] = "disabled"
    spec["metrics"]["check_pods_identical"] = False
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def step_figures(run: Path, first: int, last: int) -> None:
    step_s = {r["step"]: r["step_s"] for r in read_records(run) if r["kind"] == "step"}
    steady = {k: v for k, v in step_s.items() if k > 2}
    traced = [steady[k] for k in range(first, last + 1) if k in steady]
    # the step right after a capture pays for stop_trace's writing of the trace files
    untraced = {k: v for k, v in steady.items() if not first <= k <= last + 1}
    before = [v for k, v in untraced.items() if k < first]
    after = [v for k, v in untraced.items() if k > last]
    polls = [v for k, v in untraced.items() if k % POLL_EVERY == 0]
    others = [v for k, v in untraced.items() if k % POLL_EVERY]
    base = statistics.median(untraced.values())
    print(f"untraced steps: median {base:.3f} s ({len(untraced)} steps); traced steps "
          f"{first}-{last}: mean {statistics.mean(traced):.3f} s")
    print(f"  traced / untraced: {statistics.mean(traced) / base:.3f} (goal <= 1.10)")
    print(f"  the step after the capture (trace files written): {step_s.get(last + 1, 0):.3f} s")
    if before and after:
        print(f"  untraced after / before the capture: "
              f"{statistics.median(after) / statistics.median(before):.3f} (goal 1.00)")
    if polls and others:
        print(f"  poll steps (one broadcast) / other untraced steps: "
              f"{statistics.median(polls) / statistics.median(others):.3f}")


def report_figures(report: dict) -> None:
    for h in report["hosts"]:
        total = sum(h["seconds"].values())
        print(f"host {h['host']}: categories / trace window {total / h['trace_step_s']:.3f}; "
              f"trace window / the loop's step_s {h['trace_step_s'] / h['measured_step_s']:.3f} "
              "(goal within 5%)")
    comparison = report.get("comparison")
    if comparison:
        print("predicted vs measured (the hosts' mean), measured/predicted:")
        for name, row in comparison["rows"].items():
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            measured = "-" if row["measured_s"] is None else f"{row['measured_s']:.4f} s"
            print(f"  {name:<20} predicted {row['predicted_s']:.4f} s  measured {measured}  "
                  f"ratio {ratio}")
        print(f"  MFU predicted {100 * comparison['predicted_mfu']:.1f}%  measured "
              f"{100 * comparison['measured_mfu']:.2f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--trace", type=int, default=5, help="steps traced")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: temp)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    root = args.dir or Path(tempfile.mkdtemp(prefix="palm-bench-profile-"))
    job = write_job(root, args.steps)
    run = root / "run" / "local-cpu"
    print(f"work folder {root}; local-cpu: {args.steps} steps, batch 32, {args.trace} traced")
    with running_cluster(root / "cluster", pods=2, hosts_per_pod=2, chips_per_host=4) as state:
        env = driver_env(state)
        training = subprocess.Popen([BIN / "palm", "run", str(job)], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while not (run / "profile" / "listening.json").exists():
            if training.poll() is not None:
                print(training.stdout.read()[-3000:])
                return 1
            time.sleep(1)
        # the first request after the compile steps: host 0 answers at its next poll step
        while not any(r["kind"] == "step" and r["step"] >= 8 for r in read_records(run)):
            time.sleep(1)
        start = time.monotonic()
        asked = subprocess.run([BIN / "palm", "profile", str(run), "--steps", str(args.trace)],
                               env=env, capture_output=True, text=True, timeout=1200)
        print(f"palm profile: exit {asked.returncode} after {time.monotonic() - start:.1f} s")
        print(asked.stderr.strip())
        done = training.wait(timeout=1800)
        (root / "palm-run.log").write_text(training.stdout.read())
        if asked.returncode or done:
            print(f"palm run: exit {done}")
            return 1
        print(asked.stdout)
    # after the run: the plan's compile must not share the 2 cores with the timed steps
    planned = subprocess.run([BIN / "palm", "profile", str(run), "--report", "--plan", "--json"],
                             capture_output=True, text=True, timeout=600)
    report = json.loads(planned.stdout)
    step_figures(run, report["first_step"], report["last_step"])
    report_figures(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
