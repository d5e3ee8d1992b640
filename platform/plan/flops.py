"""The matmul FLOPs a train step asks for, counted in its jaxpr: the reference for the compiler's.

The appendix-B formula (6N + 12LHQT per token) excludes rematerialisation; the jaxpr of the
step includes exactly the matmuls the remat policy recomputes (and a one-hot embedding's),
with every `scan` multiplied by its length. The compiled program, read by `plan.hlo`, must
count the same FLOPs: a ratio away from 1 means the reader missed a loop or the compiler
duplicated work, and `palm plan` says so with the numbers.
"""

from __future__ import annotations

import math

# How far compiled and jaxpr matmul FLOPs may differ before a plan warns: XLA may
# simplify a few matmuls away (e.g. against known zeros); more than this is a real gap.
TOLERANCE = 0.02


def jaxpr_matmul_flops(closed_jaxpr) -> float:
    """2 x multiply-adds of every dot_general, scans counted `length` times."""
    from jax.extend.core import jaxprs_in_params

    def count(jaxpr, times: int) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                k = math.prod(lhs[d] for d in lhs_contracting)
                total += times * 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
            if eqn.primitive.name == "while":
                raise ValueError("the step has a while loop of unknown length: use lax.scan")
            inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
            for sub in jaxprs_in_params(eqn.params):
                total += count(sub, inner)
        return total

    return count(closed_jaxpr.jaxpr, 1)


def flops_warning(job: str, compiled: float, program: float, formula: float) -> str | None:
    """A one-line warning when the compiled count is not what the program asks for."""
    if abs(compiled / program - 1) <= TOLERANCE:
        return None
    return (f"{job}: compiled matmul FLOPs {compiled:.4g} per step are {compiled / program:.3f}x "
            f"the program's {program:.4g} (formula {formula:.4g}; the remat policy explains "
            f"{program / formula:.3f}x): the compiler duplicates work or a loop was miscounted")
