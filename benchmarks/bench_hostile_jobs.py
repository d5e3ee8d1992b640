"""Time and memory of `palm run` on each hostile job file of tests/support/hostile_jobs.py.

    python benchmarks/bench_hostile_jobs.py [--palm .venv/bin/palm]

Prints one row per case: exit code, wall seconds, CPU seconds, peak RSS of that process
(os.wait4) and the first line of its message. Target: each under 2 s and 200 MB, exit 2.
Every case is rejected while the job file is read, so no Ray cluster is touched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile_jobs import cases  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--palm", default=str(Path(sys.executable).parent / "palm"))
    args = parser.parse_args()
    print(f"{'case':<22} {'exit':>4} {'wall s':>7} {'cpu s':>6} {'MB':>5}  message (last line)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, _) in cases().items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
            start = time.monotonic()
            proc = subprocess.Popen(
                [args.palm, "run", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},
            )
            stderr = proc.stderr.read().decode(errors="replace")
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - start
            first = (stderr.strip().splitlines() or [""])[-1].strip()
            print(
                f"{name:<22} {os.waitstatus_to_exitcode(status):>4} {wall:>7.2f} "
                f"{usage.ru_utime + usage.ru_stime:>6.2f} {usage.ru_maxrss / 1024:>5.0f}  "
                f"{first[:110]}"
            )


if __name__ == "__main__":
    main()
