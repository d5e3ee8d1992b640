"""Abstract TPU v4 devices on a machine without a TPU: what `palm plan` compiles for.

Its own module because both the plan (report.py) and the compiler-flag check
(compiler_flags_check.py, which the plan also calls) need it.
"""

from __future__ import annotations

import os


def tpu_devices(ici_topology: str, pods: int):
    """Abstract TPU v4 devices of `pods` slices of `ici_topology` chips (megacore: 1 per chip)."""
    from palm_platform.topology import v4_pod_type

    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # quiets libtpu's host probe
    # Planning touches no TPU: let several planners (or a test beside a run) load libtpu.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        # libtpu's "could not determine TPU accelerator type" line on a machine without a
        # TPU, quieted by the slice's own type (which no compile reads)
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", v4_pod_type(ici_topology))
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
