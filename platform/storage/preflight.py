"""The one pre-flight for gs:// paths: gcsfs, credentials, network, buckets, emulator.

`palm run` calls `check_storage(job)` next to the data check; every other command that takes
a gs:// path (`palm ckpt list|verify`, `palm generate`, `palm eval`, `palm status`, `palm
data`) calls `check_gcs_paths` on its paths before it touches them. Every failure is one
line naming the field (or argument), the path and the fix, raised as StorageConfigError for
the command to print and exit 2 with, within PREFLIGHT_TIMEOUT_S. Without it the same
mistakes show up late: `palm ckpt list gs://B/ckpt` with no credentials took 49 s of gcsfs
retries, printed aiohttp tracebacks and then said "no such checkpoint directory"; a job's
showed up minutes later on every host, inside Orbax or TensorStore, as a retried worker error.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from palm_platform.storage.env import EmulatorEnvError, check_emulator_env, emulator_urls

# Every check together stays under the 10 s a user waits for a one-line answer.
PREFLIGHT_TIMEOUT_S = 8.0
GCS_HOST = "storage.googleapis.com"


class StorageConfigError(ValueError):
    """A gs:// path of the job cannot be used; the message names the field and the fix."""


def gcs_paths(job) -> dict[str, str]:
    """job field -> gs:// path, for every storage path of the job that is on GCS."""
    fields = {
        "checkpoint.directory": job.checkpoint.directory,
        "data.tokenizer": job.data.tokenizer,
        "run_dir": job.run_dir,
    }
    if job.data.cache_dir:
        fields["data.cache_dir"] = job.data.cache_dir
    if job.data.store:
        fields["data.store"] = job.data.store
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
    if "run_dir" in paths:
        raise StorageConfigError(
            f"run_dir: {paths['run_dir']}: the run folder must be local (metrics are appended "
            "line by line, which GCS objects cannot do). Fix: a local run_dir; checkpoints "
            "and data may stay on gs://"
        )
    check_gcs_paths(paths)


def check_gcs_paths(paths: Mapping[str, str] | Iterable[str],
                    timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """The gs:// pre-flight every command runs on the paths it was given (others are skipped).

    `paths`: field or argument name -> path (named in the message), or just paths. Checks, in
    order, each failing in one line with the fix: gcsfs is installed; credentials exist
    (unless the GCS emulator's variables are set); GCS (or the emulator) answers on the
    network; each bucket exists and is readable. All within `timeout_s`, whatever the network
    does (a check still running then is reported as unreachable, not waited for).
    """
    named = dict(paths) if isinstance(paths, Mapping) else {str(p): str(p) for p in paths}
    named = {field: str(path) for field, path in named.items() if str(path).startswith("gs://")}
    if not named:
        return
    field, path = next(iter(named.items()))
    where = path if field == path else f"{field}: {path}"
    if not _gcsfs_installed():  # etils/Orbax and fsspec reach gs:// through it
        raise StorageConfigError(
            f"{where}: gs:// paths need the gcsfs package, which is missing from this "
            "Python environment. Fix: `bash scripts/setup.sh` (or `pip install gcsfs`)"
        )
    started = time.monotonic()
    _bounded(lambda: _check_reach(where), timeout_s, where)
    # gcsfs is imported only now, outside the time budget (seconds on a busy machine): the
    # common failures (no credentials, no network) are told before it is ever needed.
    import gcsfs  # noqa: F401

    _bounded(lambda: _check_buckets(named), max(timeout_s - (time.monotonic() - started), 3.0),
             where)


def _gcsfs_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("gcsfs") is not None
    except ValueError:  # sys.modules["gcsfs"] = None: treated as missing, like an import
        return False


def _check_reach(where: str) -> None:
    """Credentials (unless the emulator is set) and a TCP connection to GCS or the emulator."""
    try:
        if not emulator_urls():
            check_credentials()
        check_network()
    except StorageConfigError as error:
        raise StorageConfigError(f"{where}: {error}") from None


def _check_buckets(named: dict[str, str]) -> None:
    for bucket in dict.fromkeys(bucket_of(p) for p in named.values()):
        first = next(f for f, p in named.items() if bucket_of(p) == bucket)
        check_bucket(first, named[first])


def check_network(timeout_s: float = 3.0) -> None:
    """GCS (or the emulator, when its variables are set) accepts a TCP connection."""
    urls = emulator_urls()
    if urls:
        url = next(iter(urls.values()))
        parts = urlsplit(url if "://" in url else f"http://{url}")
        host, port, what = parts.hostname or "", parts.port or 80, f"the GCS emulator at {url}"
        fix = "start it (`palm gcs-emulator`) or unset " + " and ".join(urls)
    else:
        host, port, what = GCS_HOST, 443, f"Google Cloud Storage ({GCS_HOST}:443)"
        fix = "check this machine's network and proxy settings"
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise StorageConfigError(f"cannot reach {what}: {reason}. Fix: {fix}") from None


def _bounded(check: Callable[[], None], timeout_s: float, where: str) -> None:
    """Run `check` in a daemon thread; raise what it raised, or say it did not answer in time.

    A thread, not a timeout per call: google-auth's metadata probe, DNS and gcsfs's retries
    each have their own (long) timeouts, and none bounds the sum. The daemon thread is simply
    left behind when time is up; the command exits 2 right after."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            check()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(error)

    worker = threading.Thread(target=run, name="gcs-preflight", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise StorageConfigError(
            f"{where}: no answer from Google Cloud Storage within {timeout_s:.0f} s (no "
            "network, a firewall, or a hanging proxy?). Fix: check this machine's network, "
            "or use a local path")
    if isinstance(outcome[0], StorageConfigError):
        raise outcome[0]
    if outcome[0] is not None:
        from palm_platform.yaml_safe import one_line

        raise StorageConfigError(one_line(
            f"{where}: gs:// check failed ({type(outcome[0]).__name__}: {outcome[0]}). Fix: "
            "check credentials and network, or use a local path", 300)) from None
