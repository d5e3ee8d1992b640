"""Check a job's gs:// paths before any worker starts: gcsfs, credentials, buckets, emulator.

`palm run` calls `check_storage(job)` next to the data check; every failure is one line
naming the job field, the path and the fix, and exits 2. Without it the same mistakes show
up minutes later on every host, inside Orbax or TensorStore, as a retried worker error.
"""

from __future__ import annotations

from palm_platform.storage.env import EmulatorEnvError, check_emulator_env, emulator_urls


class StorageConfigError(ValueError):
    """A gs:// path of the job cannot be used; the message names the field and the fix."""


def gcs_paths(job) -> dict[str, str]:
    """job field -> gs:// path, for every storage path of the job that is on GCS."""
    fields = {"checkpoint.directory": job.checkpoint.directory, "data.tokenizer": job.data.tokenizer,
              "run_dir": job.run_dir}
    if job.data.cache_dir:
        fields["data.cache_dir"] = job.data.cache_dir
    for i, source in enumerate(job.data.sources):
        for j, path in enumerate(source.paths):
            fields[f"data.sources[{i}].paths[{j}]"] = path
    return {field: str(path) for field, path in fields.items() if str(path).startswith("gs://")}


def bucket_of(path: str) -> str:
    return path.removeprefix("gs://").split("/", 1)[0]


def check_credentials() -> None:
    """Google application-default credentials must exist (not needed with the emulator)."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default()
    except DefaultCredentialsError as error:
        raise StorageConfigError(
            f"no Google Cloud credentials for gs:// ({str(error).splitlines()[0][:120]}). "
            "Fix: on TPU VMs attach a service account with storage access; elsewhere run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from None


def check_bucket(field: str, path: str) -> None:
    """The bucket of `path` exists and this process may read it."""
    import gcsfs

    bucket = bucket_of(path)
    fs = gcsfs.GCSFileSystem()
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise StorageConfigError(
            f"{field}: {path}: bucket gs://{bucket} does not exist"
            + (" on the GCS emulator" if emulator_urls() else "")
            + ". Fix: create it (`gcloud storage buckets create gs://"
            + f"{bucket}`, or `palm gcs-emulator --bucket {bucket}`) or correct the path"
        ) from None
    except (PermissionError, OSError) as error:
        raise StorageConfigError(
            f"{field}: {path}: cannot read bucket gs://{bucket}: "
            f"{str(error).splitlines()[0][:160]}. Fix: grant this account storage access"
        ) from None


def check_storage(job) -> None:
    """Raise StorageConfigError if a gs:// path of `job` cannot be used from here."""
    try:
        check_emulator_env(local_cluster=job.topology.local)
    except EmulatorEnvError as error:
        raise StorageConfigError(f"topology.local: {error}") from None
    paths = gcs_paths(job)
    if not paths:
        return
    field, path = next(iter(paths.items()))
    if "data.cache_dir" in paths:
        raise StorageConfigError(
            f"data.cache_dir: {paths['data.cache_dir']}: the token cache must be local (it is "
            "memory-mapped). Fix: a local cache_dir; the sources may stay on gs://"
        )
    if "run_dir" in paths:
        raise StorageConfigError(
            f"run_dir: {paths['run_dir']}: the run folder must be local (metrics are appended "
            "line by line, which GCS objects cannot do). Fix: a local run_dir; checkpoints "
            "and data may stay on gs://"
        )
    try:
        import gcsfs  # noqa: F401 - etils/Orbax and fsspec reach gs:// through it
    except ImportError:
        raise StorageConfigError(
            f"{field}: {path}: gs:// paths need the gcsfs package, which is missing from this "
            "Python environment. Fix: `bash scripts/setup.sh` (or `pip install gcsfs`)"
        ) from None
    if not emulator_urls():
        check_credentials()
    for bucket in dict.fromkeys(bucket_of(p) for p in paths.values()):
        first = next(f for f, p in paths.items() if bucket_of(p) == bucket)
        check_bucket(first, paths[first])
