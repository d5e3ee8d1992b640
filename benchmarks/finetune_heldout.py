"""Held-out loss of a source checkpoint and of its fine-tune, on code and on non-code text.

    python benchmarks/finetune_heldout.py                      # the local demo and its fine-tune
    python benchmarks/finetune_heldout.py --source DIR --finetuned DIR --job JOB.yaml

Held-out code: standard-library modules that are not in the embedded corpus's `builtin:code`
list (shutil, tempfile, configparser, gettext); held-out non-code: the Python licence text
(English prose, not in the corpus). Each checkpoint's newest complete step is read onto one
CPU device; the loss is the next-token cross-entropy (no z-loss), averaged over the rows.
"""

from __future__ import annotations

import argparse
import os
import sysconfig
from pathlib import Path

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
HELD_OUT = {
    "code": [STDLIB / n for n in ("shutil.py", "tempfile.py", "configparser.py", "gettext.py")],
    "non-code": [STDLIB / "LICENSE.txt"],
}


def newest_params(directory: Path):
    import orbax.checkpoint as ocp

    from palm_platform.checkpoint import list_checkpoints
    from palm_platform.checkpoint.items import STATE, single_device_abstract_state

    step = max(i.step for i in list_checkpoints(directory) if i.complete)
    abstract = single_device_abstract_state(directory / str(step))
    restored = ocp.PyTreeCheckpointer().restore(
        directory / str(step) / STATE,
        args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)
        ),
    )
    return step, restored["params"]


def held_out_rows(paths, tokenizer, seq_len: int, rows: int) -> np.ndarray:
    ids = np.concatenate(
        [np.asarray(tokenizer.encode(p.read_text()) + [1], np.int32) for p in paths]
    )
    usable = min(rows, len(ids) // (seq_len + 1))
    return ids[: usable * (seq_len + 1)].reshape(usable, seq_len + 1)


def mean_loss(model_cfg, params, rows) -> float:
    import jax
    import jax.numpy as jnp

    from palm.model import PaLM, cross_entropy_and_z_loss

    logits, _ = jax.jit(lambda p, t: PaLM(model_cfg).apply({"params": p}, t))(params, rows[:, :-1])
    return float(cross_entropy_and_z_loss(logits, jnp.asarray(rows[:, 1:]), 0.0)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "jobs" / "local-cpu-finetune.yaml"))
    parser.add_argument("--source", default=None, help="default: the job's init_from.checkpoint")
    parser.add_argument("--finetuned", default=None, help="default: the job's checkpoint.directory")
    parser.add_argument("--rows", type=int, default=32, help="held-out sequences per text kind")
    args = parser.parse_args()
    from palm_platform.data.tokenizer import load_tokenizer
    from palm_platform.job import load_job

    job = load_job(args.job)
    model_cfg = job.model.build()
    tokenizer = load_tokenizer(job.data.tokenizer)
    source_step, source = newest_params(Path(args.source or job.init_from.checkpoint))
    tuned_step, tuned = newest_params(Path(args.finetuned or job.checkpoint.directory))
    print(
        f"source step {source_step} -> fine-tuned step {tuned_step} ({job.name}), seq_len "
        f"{job.seq_len}"
    )
    for kind, paths in HELD_OUT.items():
        rows = held_out_rows(paths, tokenizer, job.seq_len, args.rows)
        before, after = mean_loss(model_cfg, source, rows), mean_loss(model_cfg, tuned, rows)
        print(f"held-out {kind:8s} ({len(rows)} x {job.seq_len} tokens): loss {before:.3f} -> "
              f"{after:.3f} ({after - before:+.3f}, ratio {after / before:.3f})")


if __name__ == "__main__":
    main()
