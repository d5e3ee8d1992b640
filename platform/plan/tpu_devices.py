"""Abstract TPU v4 devices on a machine without a TPU: what `palm plan` compiles for.

Its own module because both the plan (report.py) and the compiler-flag check
(compiler_flags_check.py, which the plan also calls) need it.
"""

from __future__ import annotations

import math
import os


def tpu_devices(ici_topology: str, pods: int):
    """Abstract TPU v4 devices of `pods` slices of `ici_topology` chips (megacore: 1 per chip)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # quiets libtpu's host probe
    # ... and its "could not determine TPU accelerator type" line on a machine without one:
    # the slice's own type (v4-N counts TensorCores, 2 per chip), which no compile reads.
    chips = math.prod(int(n) for n in ici_topology.split("x") if n.isdigit())
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"v4-{2 * chips}")
    # Planning touches no TPU: let several planners (or a test beside a run) load libtpu.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=f"v4:{ici_topology}", chip_config_name="megacore",
            chips_per_host_bounds=(2, 2, 1), num_slices=pods,
        )
    except Exception as error:  # libtpu missing or the topology unknown to it
        raise SystemExit(
            f"cannot describe TPU v4 topology {ici_topology} x {pods} pod(s): {error}\n"
            "Fix: install the TPU extra (pip install -e '.[tpu]') and use a valid v4 topology."
        ) from None
    return topology.devices
