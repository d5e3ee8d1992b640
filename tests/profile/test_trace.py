"""The breakdown of a real trace: a tiny sharded step traced with jax.profiler (in a child
process), and the agreement on a live request's first step.

The step all-gathers a weight over 8 CPU devices, multiplies, and all-reduces a sum: the CPU
trace has the same HLO collective names as a TPU trace. The step markers are the capture hook's
(`STEP_MARK`), so the window is cut as a run's capture is.
"""

import json
import os
import subprocess
import sys

import pytest

from palm_platform.profile.capture import Capture, decide
from palm_platform.profile.trace import (
    CATEGORIES,
    breakdown,
    collective_kind,
    difference,
    load_events,
    merged,
    trace_file,
)

CAPTURE = """
import json, sys, time
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from palm_platform.profile.trace import STEP_MARK

mesh = Mesh(jax.devices(), ("data",))
sharded = NamedSharding(mesh, P("data", None))
x = jax.device_put(jnp.ones((512, 512)), sharded)
w = jax.device_put(jnp.ones((512, 512)), sharded)

@jax.jit
def step(x, w):
    y = x @ jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P()))
    return jnp.sum(y)

step(x, w).block_until_ready()  # compiled before the capture
marks = []
jax.profiler.start_trace(sys.argv[1], create_perfetto_trace=True)
for k in range(5):
    started = time.monotonic()
    if k:
        step(x, w).block_until_ready()
        time.sleep(0.02)
    with jax.profiler.TraceAnnotation(f"{STEP_MARK}{k}"):
        pass
    marks.append({"step": k, "step_s": time.monotonic() - started if k else None})
jax.profiler.stop_trace()
print(json.dumps(marks))
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """Four steps of a sharded matmul on 8 CPU devices, traced, with a 20 ms host sleep (no
    device work) each. In a fresh process: a pytest process that loaded libtpu (the plan's
    tests) cannot trace (compat/jax.py, tpu_profiler_plugin_loaded)."""
    folder = tmp_path_factory.mktemp("trace")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-c", CAPTURE, str(folder)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_events(trace_file(folder)), json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_the_categories_add_up_to_the_traced_window(traced):
    events, marks = traced
    b = breakdown(events, marks)
    assert (b.first_step, b.last_step) == (1, 4)
    assert set(b.seconds) == set(CATEGORIES)
    assert sum(b.seconds.values()) == pytest.approx(b.trace_step_s, rel=1e-9)
    # the window is what the loop would measure (marker to marker)
    assert b.trace_step_s == pytest.approx(b.measured_step_s, rel=0.1)


@pytest.mark.multiprocess
def test_device_ops_and_host_time_are_told_apart(traced):
    events, marks = traced
    b = breakdown(events, marks)
    assert b.seconds["compute"] > 0
    assert b.seconds["all-gather"] + b.overlapped.get("all-gather", 0) > 0
    assert b.seconds["all-reduce"] + b.overlapped.get("all-reduce", 0) > 0
    # the 20 ms sleep on the loop's thread is no device's: host time
    assert b.seconds["other host"] >= 0.015


def test_collective_names_of_cpu_and_tpu_traces():
    assert collective_kind("all-reduce") == "all-reduce"
    assert collective_kind("all-gather.12") == "all-gather"
    assert collective_kind("all-gather-start.1") == "all-gather"
    assert collective_kind("reduce-scatter-done") == "reduce-scatter"
    assert collective_kind("ynn_fusion.1") is None
    assert collective_kind("fusion") is None


def test_interval_difference():
    a = merged([(0, 10), (20, 30)])
    assert difference(a, merged([(2, 4), (8, 22)])) == [(0, 2), (4, 8), (22, 30)]
    assert difference(a, []) == a


def test_a_live_request_is_agreed_after_the_step_it_was_read_at():
    capture, why = decide({"id": "a", "steps": 3, "hosts": "all"}, read_at=10, host_count=4)
    assert capture == Capture(12, 3, (0, 1, 2, 3), "a") and why == ""
    capture, _ = decide({"id": "a", "at_step": 11}, read_at=10, host_count=4)
    assert capture.first == 12  # the step after the read is never the first traced
    capture, _ = decide({"id": "b", "steps": 2, "hosts": [2], "at_step": 30}, 10, 4)
    assert (capture.first, capture.last, capture.hosts) == (30, 31, (2,))


@pytest.mark.parametrize("request_, reason", [
    ({"id": "c", "hosts": [4]}, "host 4 is out of range: this run has hosts 0 to 3"),
    ({"id": "d", "at_step": 10}, "step 10 has already passed"),
])
def test_a_request_the_run_cannot_serve_is_refused(request_, reason):
    capture, why = decide(request_, read_at=10, host_count=4)
    assert capture is None and why.startswith(reason)
