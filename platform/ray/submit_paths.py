"""Where a job's outputs go when `palm run` runs as `ray job submit --working-dir . -- ...`.

Ray uploads the working directory and runs the entrypoint inside its unpacked copy,
`<ray temp>/session_<id>/runtime_resources/working_dir_files/_ray_pkg_<hash>/`. Relative
paths in the job file (`run_dir: ../runs`, `checkpoint.directory: ../runs/x/checkpoints`)
then resolve inside that copy, which belongs to one cluster session: after the cluster
restarts the same command starts again from step 1 and `palm status runs/NAME` sees nothing.

The directory the user submitted from is not knowable on the cluster side (`ray job
submit` passes only the package). So (decision):
- inputs (tokenizer, data sources) keep resolving inside the package: they were uploaded
  for that purpose, and are only read;
- an output (run_dir, checkpoint.directory, data.cache_dir) that would land inside Ray's
  session folder is moved to the same relative place under `--submit-dir` when given
  (`ray job submit --working-dir . -- palm run --submit-dir "$PWD" JOB`: the submitting
  shell expands $PWD), which is right for a local cluster; otherwise `palm run` refuses
  with exit 2 and the fix. On a real multi-host cluster outputs must be on shared storage
  (gs://) anyway: every host writes its checkpoint shards there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE_FOLDER = "working_dir_files"
PACKAGE_PREFIX = "_ray_pkg_"


class EphemeralOutputError(ValueError):
    """An output path that would live inside Ray's per-session copy of the working dir."""


@dataclass(frozen=True)
class RayPackage:
    root: Path  # .../working_dir_files/_ray_pkg_<hash>
    session: Path  # .../session_<id>: everything under it goes with the cluster session


def ray_package_of(path: Path) -> RayPackage | None:
    """The Ray-uploaded package that `path` lies in, or None."""
    parts = Path(path).resolve().parts
    for i in range(2, len(parts) - 1):
        if parts[i] == PACKAGE_FOLDER and parts[i + 1].startswith(PACKAGE_PREFIX):
            return RayPackage(root=Path(*parts[: i + 2]), session=Path(*parts[: i - 1]))
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def place_output(value: str | None, field: str, package: RayPackage,
                 submit_dir: Path | None) -> str | None:
    """`value` (absolute, or a URL) moved out of the package, or an error with the fix."""
    if value is None or "://" in value:
        return value
    path = Path(value)
    if not _inside(path, package.session):
        return value
    if submit_dir is not None and _inside(path, package.root):
        return str(Path(submit_dir).resolve() / path.relative_to(package.root))
    raise EphemeralOutputError(
        f"{field} resolves to {path}, inside Ray's uploaded copy of the working directory, "
        "which is deleted with the cluster session (checkpoints and the run folder would be "
        "lost). Fix: `ray job submit --working-dir . -- palm run --submit-dir \"$PWD\" JOB`, "
        "or make it an absolute path or a gs:// bucket")


def place_outputs(job, job_path: str | Path, submit_dir: str | Path | None):
    """The job with its output paths out of Ray's package folder (unchanged outside Ray)."""
    package = ray_package_of(Path(job_path).parent)
    if package is None:
        return job
    submit = Path(submit_dir) if submit_dir else None
    checkpoint = job.checkpoint.model_copy(update={"directory": place_output(
        job.checkpoint.directory, "checkpoint.directory", package, submit)})
    data = job.data.model_copy(update={"cache_dir": place_output(
        job.data.cache_dir, "data.cache_dir", package, submit)})
    run_dir = place_output(job.run_dir, "run_dir", package, submit)
    return job.model_copy(update={"checkpoint": checkpoint, "data": data, "run_dir": run_dir})
