"""Proof that a refactor changed no behaviour: train the 2-pod test job with a poisoned range
(a loss spike, a rollback, skipped batches) in one process and print the sha256 of its final
parameters, its optimizer state, its ledger and its metrics records without timing.

    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        .venv/bin/python scripts/equivalence.py [--reverse-hooks] [--json]

Run it at the commit before a change and after it: every line must be equal. `--reverse-hooks`
runs the same job with the Trainer's hooks in reverse order (the order of hooks must never
change a run). tests/train/test_loop_hook_order.py runs both orders through `train` and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests" / "jobs" / "loop-2pod.yaml"
TIMING = ("_s", "_at", "time", "mfu", "tokens_per_s", "seconds", "wall")


def _tree_sha(tree) -> str:
    import jax
    import numpy as np

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(jax.device_get(leaf))
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in sorted(value.items())
                if not any(k.endswith(t) or k == t.strip("_") for t in TIMING)}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def train(folder: Path, reverse_hooks: bool,
          prepare: Callable[[object], None] | None = None) -> dict[str, str]:
    """The hashes of one run in `folder` (the process moves there); `prepare(trainer)` runs
    before training (tests use it to observe the run)."""
    from palm_platform.job import load_job
    from palm_platform.supervise.config import FaultInjection
    from palm_platform.train.loop import Trainer

    shutil.copy(JOB, folder / "job.yaml")
    os.chdir(folder)
    job = load_job(folder / "job.yaml")
    job = job.model_copy(update={"faults": job.faults.model_copy(update={"inject": [
        FaultInjection(kind="poison_batches", step=25, steps=2)]})})
    trainer = Trainer(job, Path(job.run_dir))
    if reverse_hooks:
        trainer.hooks.reverse()
    if prepare is not None:
        prepare(trainer)
    try:
        trainer.run()
        state = trainer.final_state
    finally:
        trainer.close()
    run = folder / job.run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [_without_timing(r) for r in records if r.get("kind") == "step"]
    events = {r["kind"] for r in records if r.get("kind") != "step"}
    ledger = _without_timing(json.loads((run / "ledger.json").read_text()))
    kinds = [e.get("kind") for e in ledger["events"]]
    return {
        "params": _tree_sha(state.params),
        "opt_state": _tree_sha(state.opt_state),
        "ledger": hashlib.sha256(json.dumps(ledger, sort_keys=True).encode()).hexdigest(),
        "step_records": hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).hexdigest(),
        "events": ",".join(sorted(events)),
        "ledger_kinds": ",".join(kinds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reverse-hooks", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="palm-equivalence-") as folder:
        result = train(Path(folder), args.reverse_hooks)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:13} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
