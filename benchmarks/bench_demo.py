"""The README's demo as a new user meets it: set-up and the demo run, timed apart.

    python benchmarks/bench_demo.py [--repo .] [--warm-caches] [--keep DIR]

In a fresh `git clone` of the repository (its committed HEAD), with HOME pointed at an empty
folder (so the local cluster and the data cache are this run's own) and, unless
--warm-caches, empty package caches: first `bash scripts/setup.sh` (the venv), then
`bash scripts/demo.sh` (its set-up is then a no-op; cluster up, `palm run jobs/local-cpu.yaml`
with its injected kill and spike, cluster down), the JAX compilation cache cold as in a new
clone. Prints the seconds of each, their sum, the demo's terminal lines (stdout and stderr,
not a terminal) and how many of them are Ray's (a `(RayTrainWorker pid=...)` or `(raylet)`
prefix), and the summary's steps line. With --keep, the demo's terminal is in
DIR/demo-terminal.txt and the clone (with its run folder) in DIR/clone.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_PREFIX = re.compile(r"\((RayTrainWorker|raylet|pid=)")


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    run = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=3600)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stdout[-4000:]}")
    return seconds, run.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository to clone (its HEAD)")
    parser.add_argument("--warm-caches", action="store_true",
                        help="use this machine's uv/pip caches instead of empty ones")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work under this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="palm-bench-demo-"))
    clone, home = work / "clone", work / "home"
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(args.repo.resolve()), str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone,
                          capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "RAY_ADDRESS", "UV_PROJECT_ENVIRONMENT")}
    env["HOME"] = str(home)
    # No uv and no venv of this checkout on PATH: set-up installs its own, as on a new machine.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not (Path(p) / "uv").exists()
                                  and not p.startswith(str(ROOT)))
    if not args.warm_caches:
        env.update(UV_CACHE_DIR=str(work / "cache-uv"), PIP_CACHE_DIR=str(work / "cache-pip"))
    else:  # HOME moved: keep pointing at the real caches
        real = Path.home() / ".cache"
        env.setdefault("UV_CACHE_DIR", str(real / "uv"))
        env.setdefault("PIP_CACHE_DIR", str(real / "pip"))
    try:
        setup_s, _ = _run(["bash", "scripts/setup.sh"], clone, env)
        demo_s, output = _run(["bash", "scripts/demo.sh"], clone, env)
        (work / "demo-terminal.txt").write_text(output)  # kept with --keep
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    lines = output.splitlines()
    ray_lines = [ln for ln in lines if RAY_PREFIX.search(ln)]
    steps = next((ln.strip() for ln in lines if ln.strip().startswith("steps ")), "no summary")
    caches = "this machine's package caches" if args.warm_caches else "empty package caches"
    print(f"the demo from a fresh clone of {head}, {caches}, measured "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores")
    print(f"  set-up (scripts/setup.sh)                 {setup_s:7.1f} s")
    print(f"  demo (scripts/demo.sh: cluster, run, down) {demo_s:7.1f} s")
    print(f"  together                                  {setup_s + demo_s:7.1f} s "
          f"({(setup_s + demo_s) / 60:.1f} min)")
    print(f"  terminal lines of the demo: {len(lines)}, of them Ray's: {len(ray_lines)}")
    print(f"  summary: {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
