"""`palm run`'s check of the job's compiler flags, before any worker starts.

On TPU hosts the flags become `LIBTPU_INIT_ARGS`, and libtpu ends the process at load on a
flag it does not know: every host would die and Ray Train would restart them until its
budget is spent. So the flags are compiled once here first, in a child process against a
small topology of the job's generation (plan/compiler_flags_check.py), and a rejection stops
`palm run` with libtpu's sentence. On the local fake-TPU cluster the flags are not used
(JAX runs on CPU), so only flags the job sets itself are checked there, and only where
libtpu is installed.
"""

from __future__ import annotations

import logging

from palm_platform.compiler_flags import init_args

logger = logging.getLogger(__name__)


class CompilerFlagsError(ValueError):
    """libtpu rejects the job's compiler flags (its own sentence, the field and the fix)."""


def check_compiler_flags(job) -> None:
    """Raise CompilerFlagsError if libtpu rejects the flags the job's TPU hosts would get."""
    from palm_platform.plan.compiler_flags_check import LibtpuMissing, rejection_in_subprocess

    topo = job.topology
    if topo.local and not topo.compiler_flags:
        return  # nothing of the job's own, and nothing reaches the CPU workers
    flags = topo.effective_compiler_flags
    try:
        rejection = rejection_in_subprocess(flags, topo.accelerator)
    except LibtpuMissing as error:  # the hosts have libtpu; this driver may not
        logger.warning("compiler flags %s not checked before start: %s", init_args(flags), error)
        return
    if rejection is not None:
        raise CompilerFlagsError(
            f"topology.compiler_flags: libtpu rejects {init_args(flags)} for {topo.accelerator}: "
            f"{rejection}. Fix: remove or correct that flag (defaults and their sources: "
            "platform/compiler_flags.py)")
