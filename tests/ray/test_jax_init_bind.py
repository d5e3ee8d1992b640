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
