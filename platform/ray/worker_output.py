"""What `palm run`'s terminal shows of the workers' output, and where the rest goes.

Ray streams every worker's stdout and stderr to the driver, and prints each line behind a
`(RayTrainWorker pid=N, ip=A)` prefix in colour; the raylet's "worker died" reports arrive
the same way as a paragraph each. Here every such line goes to the run's log file
(`RUN_DIR/NAME/logs/workers.log`, Ray's prefix kept, no colour; NEVER_PRINTED lines
not even there), and the terminal gets only
palm's own warnings and errors from the workers (a fault injected, a lost peer, a stuck host),
as their message, once however many hosts say it; palm's routine lines (steps, checkpoints)
are on the live view's bar already. A dead worker becomes one line, which the live view adds
to its restart sentence (`restart_cause`). `palm run --verbose` prints as Ray does as well.

The hook into Ray's printing is `compat/ray.py`'s `route_worker_output` (private API,
version-checked). Also here: the lines a driver never prints (NEVER_PRINTED, which Ray's own
deduplicator drops too) and the libtpu logs kept out of a fake-TPU driver's terminal.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from palm_platform.compat import ray as ray_compat

# --- Lines the driver never prints ----------------------------------------------------------
# jaxlib's gloo writes "[Gloo] Rank N is connected to M peer ranks. Expected number of connected
# peer ranks is : M" to stdout for every communicator it builds, unconditionally (no log level):
# about 40 lines per fake host in the local demo, and again after every restart, which Ray
# forwards to the driver's terminal. Ray's driver-side log deduplicator drops lines matching
# RAY_DEDUP_LOGS_SKIP_REGEX (public, but read once, when `ray` is first imported); if `ray` was
# imported before this module, the pattern goes into its private deduplicators instead
# (compat/ray.py). Lines written by two threads at once arrive torn, hence the other
# alternatives (and a torn write leaves an empty line: no worker line without text is worth
# printing). Also Ray 2.60's error line at every worker-group start about its own
# PreemptionWatcher actor (harmless, ray-project/ray#53727).
NEVER_PRINTED = (
    r"^\s*$|\[Gloo\] Rank \d|is connected to \d+ peer ranks|connected peer ranks is :"
    r"|class name: 'PreemptionWatcher' .* has constructor arguments in the object store"
)


def drop_never_printed_lines() -> None:
    """Make this driver skip the NEVER_PRINTED worker lines (the user's own pattern is kept)."""
    own = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
    if own and NEVER_PRINTED in own:
        return
    pattern = f"{own}|{NEVER_PRINTED}" if own else NEVER_PRINTED
    os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = pattern
    ray_compat.set_dedup_skip_pattern(pattern)


drop_never_printed_lines()  # before `ray` reads the variable, if it is not loaded yet


# -- Ray re-points the session's libtpu log link at the driver's TPU_LOG_DIR ------------------
# Every process that joins a Ray session, a driver included, re-points the session's
# `logs/tpu_logs` link at its own TPU_LOG_DIR, else /tmp/tpu_logs (ray/_private/node.py
# `_init_temp`), and the head's log monitor streams every file behind that link to the
# drivers. On a laptop /tmp/tpu_logs holds every libtpu log ever written there (`palm plan`):
# 15,000 old lines flooded the README demo's terminal before its first step. The fake hosts
# run on CPU and write no libtpu logs, so for them the link may as well point at an empty
# folder of the driver's own. Real TPU clusters keep Ray's behaviour (their hosts' logs are
# worth streaming), so only drivers of fake-TPU clusters call this.
def keep_libtpu_logs_out_of_the_terminal() -> None:
    """Give this driver an empty TPU_LOG_DIR of its own, unless one is set."""
    if "TPU_LOG_DIR" in os.environ:
        return
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"palm-driver-tpu-logs-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    os.environ["TPU_LOG_DIR"] = str(folder)


LOG_FILE = "workers.log"

# ray/worker.py's configure_logging: "2026-12-04 07:37:11,207 ERROR palm host 0/4: lost ...".
_PALM_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>WARNING|ERROR|CRITICAL) "
                        r"palm(?:_platform)?(?:\.[\w.]+)? (?P<message>.+)$")
# A palm line names its host like this when it is about one host ("host 1/4: ..." or
# "FAULT step 25 host 1: kill_host").
_HOST = re.compile(r"\bhost (\d+(?:/\d+)?)\b")
# The raylet's report of a dead worker (ray/_private/worker.py listen_error_messages).
_DIED = re.compile(r"A worker died or was killed")
_FIELD = {name: re.compile(rf"{label}: (\S+)") for name, label in
          (("pid", "Worker PID"), ("ip", "Worker IP address"), ("exit", "Worker exit type"))}
_DETAIL = re.compile(r"Worker exit detail: (.*?)(?: Some common causes|$)")
_NEVER = re.compile(NEVER_PRINTED)  # gloo's line per communicator, torn lines: not even logged
SAME_LINE_WINDOW_S = 30.0  # the same message from several hosts within this is one event


class WorkerOutput:
    """Ray's driver-side printer of worker lines, replaced: see the module docstring."""

    def __init__(self, log_dir: Path, *, verbose: bool = False, stream=None):
        self.log_path = Path(log_dir) / LOG_FILE
        self.verbose = verbose
        self._stream = stream  # None: the current sys.stderr (pytest's capsys swaps it)
        self._lock = threading.Lock()
        self._hosts: dict[str, str] = {}  # worker pid -> "1/4", from the palm lines it wrote
        self._recent: dict[str, float] = {}
        self._deaths: list[tuple[str, str]] = []
        self._file = None

    def handle(self, data: dict[str, Any], ignore_prefix: bool = False,
               ray_print=None) -> None:
        """One batch of lines from one worker (Ray's `print_to_stdstream(data, ...)`)."""
        lines = [line for line in data.get("lines", []) if not _NEVER.search(line)]
        with self._lock:
            self._log(data, lines)
            for line in lines:
                self._terminal(data, line)
        if self.verbose and ray_print is not None:
            ray_print(data, ignore_prefix)

    def restart_cause(self) -> str | None:
        """What died since the last call, in one line (None if Ray reported nothing)."""
        with self._lock:
            deaths, self._deaths = self._deaths, []
        # Workers that died of the same cause share one clause: a killed host takes the
        # group's other processes down with the same connection error, which once read as the
        # same sentence four times.
        by_cause: dict[str, list[str]] = {}
        for who, why in deaths:
            by_cause.setdefault(why, []).append(who)
        clauses = [f"{_and(whos)} died: {why}" for why, whos in by_cause.items()]
        return "; ".join(clauses) or None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _log(self, data: dict[str, Any], lines: list[str]) -> None:
        if self._file is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.log_path.open("a", buffering=1)
        prefix = _ray_prefix(data)
        for line in lines:
            self._file.write(f"{prefix} {line}\n")

    def _terminal(self, data: dict[str, Any], line: str) -> None:
        if data.get("pid") == "raylet":
            if _DIED.search(line):
                self._deaths.append(self._death(line))
            return
        palm = _PALM_LINE.match(line)
        if palm is None:
            return
        message = palm["message"]
        host = _HOST.search(message)
        if host is not None:
            self._hosts[str(data.get("pid"))] = host[1]
        if self.verbose:
            return  # Ray prints it
        now = time.monotonic()
        if now - self._recent.get(message, -SAME_LINE_WINDOW_S) < SAME_LINE_WINDOW_S:
            return
        self._recent[message] = now
        stream = self._stream or sys.stderr
        print(message, file=stream, flush=True)

    def _death(self, report: str) -> tuple[str, str]:
        """('host 1/4 (worker pid 10427)', 'Worker unexpectedly exits with ... code 2')."""
        fields = {name: (m[1] if (m := pattern.search(report)) else None)
                  for name, pattern in _FIELD.items()}
        pid = fields["pid"]
        who = f"worker pid {pid}" if pid else "a worker"
        if pid in self._hosts:
            who = f"host {self._hosts[pid]} ({who})"
        detail = _DETAIL.search(report)
        why = detail[1].rstrip(". ") if detail else (fields["exit"] or "no reason given")
        return who, why


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _ray_prefix(data: dict[str, Any]) -> str:
    """Ray's own prefix, without colour: '(RayTrainWorker pid=12, ip=10.0.0.2)'."""
    name = data.get("actor_name") or data.get("task_name") or ""
    pid = data.get("pid")
    if pid in ("raylet", "autoscaler"):
        return f"({pid})"
    ip = f", ip={data['ip']}" if data.get("ip") else ""
    return f"({name + ' ' if name else ''}pid={pid}{ip})"
