"""Does libtpu accept these compiler flags for this TPU generation? A tiny AOT compile says.

An unknown flag in `LIBTPU_INIT_ARGS` ends a TPU host's process when libtpu loads ("ERROR:
Unknown command line flag"), and a flag libtpu does not support on a generation fails the
first compile. So `palm plan` and `palm run` compile a small program first, with the flags
as per-compile options, against 4 abstract chips of the job's generation (libtpu's
compile-only client: no TPU needed, ~2 s once libtpu is loaded), and stop with libtpu's
own sentence. The program has the collectives a train step has (a weight all-gather, an
activation all-reduce, a gradient reduce-scatter), so flags about any of them are parsed
and applied.

`rejection_in_subprocess` runs the check in a child process: the caller then never loads
libtpu itself (`palm run` on a TPU host must not hold the chips; `palm plan` sets
`LIBTPU_INIT_ARGS` before its own libtpu loads, so the flags must be known good first).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from palm_platform.compiler_flags import FlagValue, compiler_options

# The small topology of each generation the check compiles for (plan.tpu_devices: v4 only).
CHECK_TOPOLOGY = {"tpu-v4": "2x2x1"}


class LibtpuMissing(RuntimeError):
    """libtpu (the `tpu` extra) is not installed here: the flags cannot be checked."""


def libtpu_rejection(flags: dict[str, FlagValue], accelerator: str = "tpu-v4") -> str | None:
    """libtpu's error for a tiny step compiled with `flags`, in one line; None if accepted."""
    if importlib.util.find_spec("libtpu") is None:
        raise LibtpuMissing("libtpu is not installed here (pip install -e '.[tpu]')")
    try:
        tiny_step(accelerator).compile(compiler_options=compiler_options(flags))
    except Exception as error:  # JaxRuntimeError: libtpu's status and sentence
        return " ".join(str(error).split())
    return None


def tiny_step(accelerator: str = "tpu-v4"):
    """The check's program, lowered for 4 abstract chips (2 data x 2 model) of the generation."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from palm_platform.plan.tpu_devices import tpu_devices

    mesh = Mesh(np.array(tpu_devices(CHECK_TOPOLOGY[accelerator], 1)).reshape(2, 2),
                ("data", "model"))

    def arg(shape, spec):
        return jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, spec))

    def loss(w_in_DxF, w_out_FxD, x_BxD):  # an FSDP x tensor-parallel MLP
        return (jnp.tanh(x_BxD @ w_in_DxF) @ w_out_FxD).astype(jnp.float32).sum()

    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
        arg((256, 512), P("data", "model")), arg((512, 256), P("model", "data")),
        arg((64, 256), P("data")))


def rejection_in_subprocess(flags: dict[str, FlagValue], accelerator: str = "tpu-v4",
                            timeout_s: float = 300) -> str | None:
    """`libtpu_rejection` in a child process on CPU; raises LibtpuMissing without libtpu."""
    if importlib.util.find_spec("libtpu") is None:
        raise LibtpuMissing("libtpu is not installed here (pip install -e '.[tpu]')")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("LIBTPU_INIT_ARGS", None)  # the flags under test go as compile options only
    result = subprocess.run(
        [sys.executable, "-m", "palm_platform.plan.compiler_flags_check", accelerator,
         json.dumps(flags)], capture_output=True, text=True, timeout=timeout_s, env=env)
    if result.returncode != 0:  # the check itself broke: say how, do not guess at the flags
        tail = " ".join(result.stderr.strip().splitlines()[-3:])
        return f"the flag check could not run (exit {result.returncode}): {tail}"
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["rejection"]


if __name__ == "__main__":
    print(json.dumps({"rejection": libtpu_rejection(json.loads(sys.argv[2]), sys.argv[1])}))
