"""The breakdown of a real trace: a tiny sharded step traced in this process with jax.profiler.

The step all-gathers a weight over 8 CPU devices, multiplies, and all-reduces a sum: the CPU
trace has the same HLO collective names as a TPU trace. The step markers are the capture hook's
(`STEP_MARK`), so the window is cut as a run's capture is.
"""

import time

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from palm_platform.profile.capture import Capture, decide
from palm_platform.profile.trace import (
    CATEGORIES,
    STEP_MARK,
    breakdown,
    collective_kind,
    difference,
    load_events,
    merged,
    trace_file,
)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """Four steps of a sharded matmul, traced, with a 20 ms host sleep (no device work) each."""
    folder = tmp_path_factory.mktemp("trace")
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
    jax.profiler.start_trace(str(folder), create_perfetto_trace=True)
    for k in range(5):
        started = time.monotonic()
        if k:
            step(x, w).block_until_ready()
            time.sleep(0.02)
        with jax.profiler.TraceAnnotation(f"{STEP_MARK}{k}"):
            pass
        marks.append({"step": k, "step_s": time.monotonic() - started if k else None})
    jax.profiler.stop_trace()
    return load_events(trace_file(folder)), marks


def test_the_categories_add_up_to_the_traced_window(traced):
    events, marks = traced
    b = breakdown(events, marks)
    assert (b.first_step, b.last_step) == (1, 4)
    assert set(b.seconds) == set(CATEGORIES)
    assert sum(b.seconds.values()) == pytest.approx(b.trace_step_s, rel=1e-9)
    # the window is what the loop would measure (marker to marker)
    assert b.trace_step_s == pytest.approx(b.measured_step_s, rel=0.1)


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
    assert capture == Capture(11, 3, (0, 1, 2, 3), "a") and why == ""
    capture, _ = decide({"id": "b", "steps": 2, "hosts": [2], "at_step": 30}, 10, 4)
    assert (capture.first, capture.last, capture.hosts) == (30, 31, (2,))


@pytest.mark.parametrize("request_, reason", [
    ({"id": "c", "hosts": [4]}, "host 4 is out of range: this run has hosts 0 to 3"),
    ({"id": "d", "at_step": 10}, "step 10 has already passed"),
])
def test_a_request_the_run_cannot_serve_is_refused(request_, reason):
    capture, why = decide(request_, read_at=10, host_count=4)
    assert capture is None and why.startswith(reason)
