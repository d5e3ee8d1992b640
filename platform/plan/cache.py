"""A cache of `palm plan` reports, keyed by everything that decides the compiled step.

A 540B plan compiles for minutes; `palm plan --goodput` (and a second `palm plan` of the same
step) reads the report back instead. The key hashes the job's sections that shape the program
(model, mesh, topology with its compiler flags, optimizer, the train batch and sequence
length), the pod count and microbatches, the JAX and libtpu versions and the source of the
modules that build the step: anything else (data, checkpoints, faults, W&B) can change
without a recompile. Reports live in $PALM_PLAN_CACHE or
~/.cache/palm/plans, one small JSON file each, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from palm_platform.atomic_write import write_atomic

VERSION = 1  # bump when PlanReport's fields change meaning


def cache_dir() -> Path:
    env = os.environ.get("PALM_PLAN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "palm" / "plans"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


# The modules whose source shapes the compiled step: an edit to any of them is a new step.
STEP_MODULES = ("palm", "palm_platform.train.step", "palm_platform.train.state",
                "palm_platform.train.optimizer", "palm_platform.mesh",
                "palm_platform.compiler_flags")


def code_digest() -> str:
    """sha256 of the step's source files (the model package whole)."""
    from importlib.util import find_spec

    digest = hashlib.sha256()
    for name in STEP_MODULES:
        spec = find_spec(name)
        paths = ([Path(p) for loc in spec.submodule_search_locations or []
                  for p in sorted(Path(loc).glob("*.py"))] if spec.submodule_search_locations
                 else [Path(spec.origin)])
        for path in paths:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def plan_key(job, pods: int, microbatches: int | None, extra_flags: dict | None) -> str:
    """sha256 of what decides the compiled step (not the job's name or its other sections)."""
    parts = {
        "version": VERSION,
        "model": job.model.model_dump(mode="json"),
        "mesh": job.mesh.model_dump(mode="json"),
        "topology": job.topology.model_dump(mode="json"),
        "flags": {**job.topology.effective_compiler_flags, **(extra_flags or {})},
        "optimizer": job.optimizer.model_dump(mode="json"),
        "batch": [p.sequences for p in job.train.batch_schedule],
        "microbatch_sequences": job.train.microbatch_sequences,
        "seq_len": job.seq_len,
        "pods": pods,
        "microbatches": microbatches,
        "jax": _version("jax"),
        "libtpu": _version("libtpu"),
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def load(key: str) -> dict | None:
    """The cached report's fields, or None (missing or unreadable: then the plan compiles)."""
    path = cache_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def store(key: str, report: dict) -> Path | None:
    """Write the report; a read-only or full cache folder only costs the next recompile."""
    path = cache_dir() / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(report))
    except OSError:
        return None
    return path
