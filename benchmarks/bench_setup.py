"""Set-up from a fresh clone, two ways side by side in one run: uv from the lock vs pip.

    python benchmarks/bench_setup.py [--repo .] [--rounds 1] [--keep DIR]

Each way starts from its own `git clone` of the repository (its committed HEAD) in a temporary
folder, with its own empty package caches (UV_CACHE_DIR and PIP_CACHE_DIR pointed at empty
folders), and no uv on PATH, as on a fresh machine:

- uv (today's `scripts/setup.sh`): a venv, `pip install uv`, `uv sync --frozen` of uv.lock
  with the test, tpu and eval extras;
- pip (the set-up before uv.lock): a venv, `pip install --upgrade pip`, then
  `pip install -c CONSTRAINTS -e '.[test,tpu,eval]'`, with the constraints exported from the
  same uv.lock (`uv export`, not timed), so both ways install the same versions.

Then the warm cases: `scripts/setup.sh` run again in the uv clone (nothing changed: the stamp),
and a second fresh clone set up with the uv cache the first one filled. Prints seconds, the
cold ratio uv/pip, the lines each way printed on stderr that say "warning", and whether each
venv imports the project. Downloads dominate: the figures depend on the network of the day.
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

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test", "tpu", "eval")
CHECK = "import palm, palm_platform, ray, jax, orbax.checkpoint, lm_eval; print('ok')"


def _path_without_uv() -> str:
    """PATH minus every folder holding a `uv`: set-up must install its own, as on a new machine."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (Path(p) / "uv").exists())


def _env(caches: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    env.update(PATH=_path_without_uv(), UV_CACHE_DIR=str(caches / "uv"),
               PIP_CACHE_DIR=str(caches / "pip"))
    return env


def _timed(command: list[str] | str, cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """(seconds, stderr) of a command that must succeed."""
    started = time.monotonic()
    run = subprocess.run(command, cwd=cwd, env=env, shell=isinstance(command, str),
                         capture_output=True, text=True)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        sys.exit(f"failed ({run.returncode}): {command}\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
    return seconds, run.stderr


def _warnings(stderr: str) -> int:
    return sum("warning" in line.lower() for line in stderr.splitlines())


def _imports(clone: Path) -> bool:
    run = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", CHECK], cwd=clone,
                         capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return run.returncode == 0 and run.stdout.strip().endswith("ok")


def _clone(repo: Path, into: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(repo), str(into)], check=True)
    return into


def _uv_for_export() -> str:
    """A uv to export the constraints with (not timed): PATH's, else this venv's."""
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).exists():
        sys.exit("no uv to export the lock with: run `bash scripts/setup.sh` first")
    return found


def bench(repo: Path, work: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    constraints = work / "constraints-from-lock.txt"
    subprocess.run([_uv_for_export(), "export", "--frozen", "--no-hashes", "--no-emit-project",
                    "--quiet", *(f"--extra={e}" for e in EXTRAS), "-o", str(constraints)],
                   cwd=repo, check=True, stdout=subprocess.DEVNULL)

    # uv first: if anything between here and PyPI caches what it served, pip gains from it.
    uv_clone, uv_caches = _clone(repo, work / "uv"), work / "caches-uv"
    figures["uv_cold_s"], err = _timed(["bash", "scripts/setup.sh"], uv_clone, _env(uv_caches))
    figures["uv_cold_warnings"] = _warnings(err)
    figures["uv_rerun_s"], _ = _timed(["bash", "scripts/setup.sh"], uv_clone, _env(uv_caches))
    figures["uv_imports"] = _imports(uv_clone)

    pip_clone, pip_caches = _clone(repo, work / "pip"), work / "caches-pip"
    python = os.environ.get("PYTHON", "python3")
    script = (
        f"{python} -m venv .venv && .venv/bin/python -m pip install --quiet --upgrade pip && "
        f".venv/bin/python -m pip install --quiet -c {constraints} -e '.[{','.join(EXTRAS)}]'"
    )
    figures["pip_cold_s"], err = _timed(script, pip_clone, _env(pip_caches))
    figures["pip_cold_warnings"] = _warnings(err)
    figures["pip_imports"] = _imports(pip_clone)

    # A new clone on a machine whose uv cache is filled (a second checkout, CI on a kept machine).
    warm_clone = _clone(repo, work / "uv-warm-cache")
    figures["uv_warm_cache_s"], _ = _timed(
        ["bash", "scripts/setup.sh"], warm_clone, _env(uv_caches)
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository to clone (its HEAD)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="set up under this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="palm-bench-setup-"))
    work.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo,
                          capture_output=True, text=True).stdout.strip()
    try:
        f = bench(args.repo.resolve(), work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"set-up from a fresh clone of {head}, empty caches, measured "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"  pip (constraints from uv.lock)  cold {f['pip_cold_s']:6.1f} s  "
        f"warnings {f['pip_cold_warnings']:.0f}  imports {'ok' if f['pip_imports'] else 'FAILED'}"
    )
    print(f"  uv sync --frozen (setup.sh)     cold {f['uv_cold_s']:6.1f} s  "
          f"warnings {f['uv_cold_warnings']:.0f}  imports {'ok' if f['uv_imports'] else 'FAILED'}")
    print(
        f"  ratio uv/pip cold: {f['uv_cold_s'] / f['pip_cold_s']:.2f}  (goal <= 0.50, uv <= 30 s)"
    )
    print(f"  setup.sh again, nothing changed: {f['uv_rerun_s']:.2f} s  (goal <= 2 s)")
    print(f"  setup.sh in a new clone, uv cache filled: {f['uv_warm_cache_s']:.1f} s")
    return 0 if f["uv_imports"] and f["pip_imports"] else 1


if __name__ == "__main__":
    sys.exit(main())
