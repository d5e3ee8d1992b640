"""Hostile and malformed job files fail fast and small, with one clear message and exit 2.

Each case runs `python -m palm_platform.job FILE` (the loader `palm run` uses first) in a
subprocess and reads that process's own resource usage (os.wait4). CPU time, not wall time,
is bounded: the machine running the tests may be busy, but a billion laughs or a deep
recursion burns CPU whatever the load (before the bounded loader: minutes and gigabytes).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.hostile_jobs import cases

CPU_LIMIT_S = 2.0
MEMORY_LIMIT_MB = 200
HANG_GUARD_S = 60


# Measured by a small wrapper process: a child forked from pytest (hundreds of MB with JAX
# loaded) would report pytest's RSS as its own peak, since ru_maxrss survives exec.
MEASURE = """
import json, os, subprocess, sys, time
start = time.monotonic()
with open(sys.argv[2], "wb") as err:
    proc = subprocess.Popen([sys.executable, "-m", "palm_platform.job", sys.argv[1]],
                            stdout=subprocess.DEVNULL, stderr=err)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > float(sys.argv[3]):
            proc.kill()
        time.sleep(0.02)
print(json.dumps([os.waitstatus_to_exitcode(status), time.monotonic() - start,
                  usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024]))
"""


def run_loader(path) -> tuple[int, float, float, float, str]:
    """exit code, wall s, CPU s, peak RSS MB and stderr of the loader on `path`."""
    err_path = path.with_suffix(".err")
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(err_path), str(HANG_GUARD_S)],
        capture_output=True,
        text=True,
        check=True,
    )
    code, wall, cpu, rss_mb = json.loads(out.stdout)
    return code, wall, cpu, rss_mb, err_path.read_text(errors="replace")


@pytest.mark.parametrize("name", sorted(cases()))
def test_hostile_job_file_fails_fast_small_and_clearly(tmp_path, name):
    text, words = cases()[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, wall, cpu, rss_mb, stderr = run_loader(path)
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr[-2000:])
    assert cpu < CPU_LIMIT_S, f"{name}: {cpu:.1f} s of CPU"
    assert rss_mb < MEMORY_LIMIT_MB, f"{name}: {rss_mb:.0f} MB"
    assert "Traceback" not in stderr
    assert str(path) in lines[0] and words in stderr, stderr[:1000]
    assert len(lines) <= 7 and all(len(line) <= 400 for line in lines), stderr[:2000]


def test_anchors_and_merge_keys_within_the_budget_still_load(tmp_path):
    """Aliases are allowed (sharing a block is normal YAML); overriding a merged key is no
    duplicate."""
    from palm_platform.yaml_safe import load_yaml_file

    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {pods: 2, hosts_per_pod: 2}\ntopology:\n  <<: *b\n  pods: 1\n"
                    "again: *b\n")
    assert load_yaml_file(path) == {"base": {"pods": 2, "hosts_per_pod": 2},
                                    "topology": {"pods": 1, "hosts_per_pod": 2},
                                    "again": {"pods": 2, "hosts_per_pod": 2}}
