"""jax.distributed on the local cluster: the coordinator listens on loopback only."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, socket, sys
import jax
from palm_platform.ray.jax_backend import bound_jax_initialize
from tests.support.listening import listeners
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
bound_jax_initialize(30, heartbeat_timeout_s=50)
jax.distributed.initialize(f"127.0.0.1:{port}", 1, 0)  # as Ray's JaxConfig calls it
print(json.dumps([[l.address, l.loopback] for l in listeners({os.getpid()}) if l.port == port]))
jax.distributed.shutdown()
"""


@pytest.mark.multiprocess
def test_a_loopback_coordinator_binds_loopback_only():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-2000:]
    bound = json.loads(run.stdout.strip().splitlines()[-1])
    assert bound and all(loopback for _, loopback in bound), bound


DEFERRED = """
import json, os, socket, sys
import jax
from jax._src import distributed
from palm_platform.ray import jax_backend
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]
jax_backend.bound_jax_initialize(30, heartbeat_timeout_s=50)
jax_backend.defer_jax_initialize()
jax.distributed.initialize(f"127.0.0.1:{free_port()}", 1, 0)  # as Ray's JaxConfig calls it
agent = {"recorded": dict(jax_backend.DEFERRED_INITIALIZE),
         "initialised": distributed.global_state.client is not None}
pid = os.fork()
if pid == 0:  # a generation of the JAX process: its own coordinator
    jax_backend.initialize_deferred(f"127.0.0.1:{free_port()}")
    ok = distributed.global_state.client is not None and jax.process_count() == 1
    jax.distributed.shutdown()
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
agent["child_exit"] = os.waitstatus_to_exitcode(status)
agent["initialised_after"] = distributed.global_state.client is not None
print(json.dumps(agent))
"""


@pytest.mark.multiprocess
def test_a_host_agent_records_rays_initialize_and_its_forked_process_runs_it():
    # warm hosts (ray/host_agent.py): the agent never opens jax.distributed (nor a backend);
    # a process forked from it initialises with the recorded id and count, bounded as before
    run = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-2000:]
    agent = json.loads(run.stdout.strip().splitlines()[-1])
    assert agent["recorded"]["num_processes"] == 1 and agent["recorded"]["process_id"] == 0
    assert not agent["initialised"] and not agent["initialised_after"]
    assert agent["child_exit"] == 0, run.stderr[-2000:]
