"""The README demo's host kill, run several times: which tier each restart restored from.

    python benchmarks/bench_demo_restore.py [--runs 3] [--steps 30] [--kill-step 25]
                                            [--kill-host 1] [--keep DIR]

The demo's job (jobs/local-cpu.yaml: 2 pods x 2 hosts x 4 chips, the RAM tier every 2
steps, persistent every 10) with its folders moved to a work folder and only its
`kill_host` fault kept (no poisoned batches, no eval: they do not touch the restore), run
`--runs` times on one local cluster of that shape that the script brings up in its work
folder and takes down again (as bench_goodput.py does). For each run it prints the RAM
steps saved before the kill, the step and tier the restart restored (`local`/`peer`: RAM,
`persistent`: storage), and, when a newer RAM step was passed over, why
(peer_restore.why_not_ram); then what the run left in its RAM folder
(/dev/shm/palm/<job name>) once finished. Exit 1 unless every restart restored from RAM and
every finished run gave its RAM back.

Issue 37 measured 2 of 2 demo runs restoring step 20 from persistent storage with RAM
steps 22 and 24 saved before host 1 died; this is the check that it stays fixed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.local_cluster import BIN, driver_env, running_cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "bench-demo-restore"


def job_file(folder: Path, *, steps: int, kill_step: int, kill_host: int) -> Path:
    spec = yaml.safe_load((ROOT / "jobs" / "local-cpu.yaml").read_text())
    spec["name"] = NAME
    spec["train"]["steps"] = steps
    spec["train"]["compile_cache"] = str(ROOT / "runs" / "compile-cache" / "local-cpu")
    spec["checkpoint"]["directory"] = str(folder / "checkpoints")
    spec["run_dir"] = str(folder / "runs")
    spec["faults"]["inject"] = [{"kind": "kill_host", "step": kill_step, "host": kill_host}]
    spec.pop("eval", None)
    spec.setdefault("metrics", {})["wandb_mode"] = "disabled"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ram_left(root: Path) -> str:
    if not root.exists():
        return "none (folder gone)"
    files = [p for p in root.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    hosts = sorted(p.name for p in root.iterdir())
    return f"{size / 1e6:.1f} MB in {len(files)} files ({', '.join(hosts) or 'no host folder'})"


def one_run(work: Path, index: int, args, env: dict[str, str]) -> tuple[bool, bool]:
    from palm_platform.checkpoint.local_tier import default_root
    from palm_platform.metrics.sink import read_records

    folder = work / f"run-{index}"
    job = job_file(folder, steps=args.steps, kill_step=args.kill_step, kill_host=args.kill_host)
    ram = default_root(NAME)
    shutil.rmtree(ram, ignore_errors=True)  # another launch's leftovers are never read anyway
    started = time.monotonic()
    run = subprocess.run([str(BIN / "palm"), "run", str(job)], env=env, capture_output=True,
                         text=True, timeout=1800)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        print(f"run {index}: palm run failed ({run.returncode}):\n"
              f"{(run.stdout + run.stderr)[-3000:]}")
        return False, False
    records = read_records(folder / "runs" / NAME)
    saved = [r["step"] for r in records if r["kind"] == "checkpoint_saved"
             and r.get("tier") == "local" and r["step"] < args.kill_step]
    restores = [r for r in records if r["kind"] == "checkpoint_restored" and r.get("attempt")]
    left = ram_left(ram)
    from_ram = bool(restores) and all(r.get("tier") in ("local", "peer") for r in restores)
    print(f"run {index} ({seconds:.0f} s): RAM steps saved before the kill "
          f"{saved[-2:] or 'none'}")
    for r in restores:
        why = f"; {r['why_not_ram']}" if r.get("why_not_ram") else ""
        print(f"  restart {r['attempt']}: restored step {r['step']} from {r.get('tier')} "
              f"(local {r.get('bytes_local', 0) / 1e6:.1f} MB, peer "
              f"{r.get('bytes_peer', 0) / 1e6:.1f} MB, persistent "
              f"{r.get('bytes_persistent', 0) / 1e6:.1f} MB){why}")
    if not restores:
        print("  no restart recorded (did the kill fire?)")
    print(f"  RAM left after the run: {left}")
    return from_ram, not ram.exists()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="the demo's 60 also works")
    parser.add_argument("--kill-step", type=int, default=25)
    parser.add_argument("--kill-host", type=int, default=1, help="JAX process index")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' folders here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="palm-bench-demo-restore-"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"the demo's job ({args.steps} steps, kill_host of host {args.kill_host} at step "
          f"{args.kill_step}), {args.runs} runs, {when}, {os.cpu_count()} cores")
    results = []
    try:
        with running_cluster(work / "cluster", pods=2, hosts_per_pod=2,
                             chips_per_host=4) as state:
            env = driver_env(state)
            for index in range(1, args.runs + 1):
                results.append(one_run(work, index, args, env))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    from_ram = sum(r for r, _ in results)
    freed = sum(f for _, f in results)
    print(f"restored from RAM: {from_ram} of {args.runs} runs; RAM given back: {freed} of "
          f"{args.runs}")
    return 0 if from_ram == freed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
