"""The train loop's profiler hook: trace N steps on chosen hosts from one step every host agrees on.

Two sources of captures, one mechanism:
- the job file's `profile.at_steps` (fixed, so every host knows them from the job);
- a live `palm profile` request (request.py): only host 0 reads it, every `poll_every` steps,
  and broadcasts the first traced step with palm_platform.multihost's helpers. Every host calls
  the broadcast at the same steps (hooks run in lock-step), so every host gets the same answer
  at the same step, as the preemption notice's agreed step (checkpoint/preemption.py). The
  first traced step is at least two steps after the one the request was read at (the
  broadcast waits for the next step's device work, which must not straddle the window).

A capture of steps S..S+N-1 starts the trace (`jax.profiler.start_trace`, with the Perfetto
JSON beside TensorBoard's .xplane.pb) when step S-1 is read, and stops it when step S+N-1 is
read: the trace holds exactly the wall time the loop counts as those steps' `step_s` (the loop
reads step k+1's metrics one step behind, so the device work of a step shows inside its
window). Each read step leaves a marker event ("palm step K") in the trace, so trace.py cuts
the trace at the same instants. The traced steps are charged to goodput's "profiling" badput
and named by a `profile` event, so goodput and MFU summaries can leave them out.

Costs nothing when not asked: a modulo per step; at the cadence, one file or KV read on host 0
and a one-integer broadcast (a second, small one only when a request came).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from palm_platform.atomic_write import write_atomic
from palm_platform.hook_protocol import Hook, StepInfo
from palm_platform.multihost import broadcast_int, broadcast_text
from palm_platform.profile.config import ProfileConfig
from palm_platform.profile.request import (
    channel_for_this_process,
    host_folder,
    remove_listening,
    write_listening,
)
from palm_platform.profile.trace import STEP_MARK

if TYPE_CHECKING:
    from palm_platform.metrics.goodput import GoodputTracker
    from palm_platform.metrics.sink import MetricsSink

logger = logging.getLogger("palm")


@dataclass(frozen=True)
class Capture:
    first: int  # first traced step (steps count from 1: step k is the k-th update)
    steps: int
    hosts: tuple[int, ...]
    request_id: str  # "job" for the job file's captures

    @property
    def last(self) -> int:
        return self.first + self.steps - 1


def decide(request: dict, read_at: int, host_count: int) -> tuple[Capture | None, str]:
    """A live request read at step `read_at` -> the capture, or None and why it is refused."""
    steps = int(request.get("steps", 5))
    hosts = request.get("hosts", "all")
    hosts = list(range(host_count)) if hosts == "all" else [int(h) for h in hosts]
    bad = [h for h in hosts if not 0 <= h < host_count]
    if bad:
        return None, f"host {bad[0]} is out of range: this run has hosts 0 to {host_count - 1}"
    at = request.get("at_step")
    if at is not None and int(at) <= read_at:
        return None, f"step {at} has already passed (the run read the request at step {read_at})"
    # Not read_at + 1: the trace would start right after the broadcast, which waited for step
    # read_at + 1's device work, so that step would be missing from its own window.
    first = max(read_at + 2, int(at) if at is not None else 0)
    return Capture(first, steps, tuple(sorted(set(hosts))), str(request.get("id", ""))), ""


def cannot_trace() -> str:
    """Why this process cannot trace, or "" (compat/jax.py: libtpu loaded in a CPU process)."""
    from palm_platform.compat.jax import tpu_profiler_plugin_loaded

    if jax.default_backend() != "tpu" and tpu_profiler_plugin_loaded():
        return ("libtpu is loaded in a process that trains on " + jax.default_backend() +
                " (its profiler plugin would crash it); run without the TPU plugin loaded")
    return ""


class ProfileHook(Hook):
    """Traces the job's `profile.at_steps` and live `palm profile` requests (module docstring)."""

    def __init__(self, config: ProfileConfig, run_dir: Path, job_name: str, *,
                 sink: MetricsSink, goodput: GoodputTracker):
        self.config, self.run_dir, self.job_name = config, Path(run_dir), job_name
        self.sink, self.goodput = sink, goodput
        self.index, self.count = jax.process_index(), jax.process_count()
        hosts = tuple(config.host_list(self.count))
        self.planned = [Capture(s, config.steps, hosts, "job") for s in config.at_steps]
        self.active: Capture | None = None
        self.marks: list[dict] = []
        self.channel = None
        self.handled: set[str] = set()

    def on_start(self, step: int) -> None:
        self.planned = [c for c in self.planned if c.first > step]  # a resume: not again
        if self.index == 0:
            self.channel = channel_for_this_process(self.run_dir, self.job_name)
            write_listening(self.run_dir, self.channel, self.count, self.config.poll_every)

    def on_step(self, info: StepInfo) -> None:
        step = info.step
        if self.active is not None:
            self._traced(info)
        if self.active is None:  # before the poll: its broadcast would shift the first step
            starting = next((c for c in self.planned if c.first == step + 1), None)
            if starting is not None:
                self._start(starting, step)
        if step % self.config.poll_every == 0 and self.active is None:
            self._poll(step)  # skipped on every host alike while a capture runs

    def _poll(self, step: int) -> None:
        """Host 0 reads the channel; every host gets its decision (the agreed first step)."""
        capture, answer = None, None
        if self.index == 0:
            request = self._read_request()
            if request is not None:
                capture, why = decide(request, step, self.count)
                answer = ({"id": request.get("id"), "state": "refused", "reason": why}
                          if capture is None else
                          {"id": request.get("id"), "state": "agreed", **asdict(capture)})
        first = broadcast_int(capture.first if capture is not None else 0)
        if first:
            text = broadcast_text(json.dumps(asdict(capture)) if self.index == 0 else "")
            capture = Capture(**{**json.loads(text), "hosts": tuple(json.loads(text)["hosts"])})
            self.planned.append(capture)
        if answer is not None:
            self.channel.reply(answer)
            logger.info("profile request %s: %s", answer["id"], answer["state"] if capture is None
                        else f"steps {capture.first}-{capture.last} on {len(capture.hosts)} "
                        "host(s)")

    def _read_request(self) -> dict | None:
        try:
            request = self.channel.request()
        except Exception as error:  # noqa: BLE001 - a request must never stop training
            logger.warning("profile: could not read requests (%s)", error)
            return None
        if request is None or str(request.get("id")) in self.handled:
            return None
        self.handled.add(str(request.get("id")))
        self.channel.clear()
        return request

    def _start(self, capture: Capture, step: int) -> None:
        self.planned.remove(capture)
        why = cannot_trace()
        if why:  # skipped on every host alike (the reason is the same process set-up)
            logger.warning("profile: steps %d-%d not traced: %s", capture.first, capture.last, why)
            if self.index == 0 and capture.request_id != "job" and self.channel is not None:
                self.channel.reply({"id": capture.request_id, "state": "refused",
                                    "reason": f"cannot trace: {why}"})
            return
        self.active, self.marks = capture, []
        if self.index in capture.hosts:
            folder = host_folder(self.run_dir, capture.first, self.index)
            folder.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(folder), create_perfetto_trace=True)
            self._mark(step, None)
        self.sink.event("profile", capture.first, last_step=capture.last,
                        hosts=",".join(map(str, capture.hosts)),
                        folder=str(host_folder(self.run_dir, capture.first, 0).parent))

    def _mark(self, step: int, step_s: float | None) -> None:
        with jax.profiler.TraceAnnotation(f"{STEP_MARK}{step}"):
            pass
        self.marks.append({"step": step, "step_s": step_s, "time": time.time()})

    def _traced(self, info: StepInfo) -> None:
        capture = self.active
        self.goodput.reclassify(info.step - 1, 1.0, cause="profiling")
        if self.index not in capture.hosts:
            if info.step >= capture.last:
                self.active = None
            return
        self._mark(info.step, float(info.metrics["step_s"]))
        if info.step >= capture.last:
            self._stop(capture)

    def _stop(self, capture: Capture) -> None:
        jax.profiler.stop_trace()
        folder = host_folder(self.run_dir, capture.first, self.index)
        write_atomic(folder / "steps.json", json.dumps(
            {"host": self.index, "hosts": self.count, "job": self.job_name,
             "capture": asdict(capture), "marks": self.marks}))
        self.active = None
        if self.index == 0:
            self.sink.event("profile_captured", capture.last, first_step=capture.first,
                            folder=str(folder.parent))
            if capture.request_id != "job" and self.channel is not None:
                self.channel.reply({"id": capture.request_id, "state": "done",
                                    **asdict(capture), "folder": str(folder.parent)})

    def close(self) -> None:
        if self.active is not None and self.index in self.active.hosts:
            jax.profiler.stop_trace()  # the run ended inside a capture: keep what was traced
            self.active = None
        if self.channel is not None:
            remove_listening(self.run_dir, self.channel)
            self.channel = None
