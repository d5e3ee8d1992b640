"""The GCS emulator's environment variables, and the rule for passing them to Ray workers.

gcsfs reads STORAGE_EMULATOR_HOST and TensorStore reads TENSORSTORE_GCS_HTTP_URL: set, they
send every gs:// access of the process to that server instead of Google Cloud Storage. Ray
workers do not inherit the environment of `palm run` (they are children of the raylets), so
`launch` adds the variables to the workers' runtime env, under one rule:

- forwarded only to the local fake-TPU cluster, and only when they name a loopback address
  (127.0.0.0/8, ::1, localhost): the emulator runs on this machine, and so do those workers;
- set for a job on real TPU hosts (or naming another machine), they are an error before any
  worker starts: on a pod, gs:// must be Google Cloud Storage, and a variable left over from
  local testing would otherwise send a 540B checkpoint to nowhere. Fix: unset them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

URL_VARS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")
# Set with the URLs, forwarded with them: the emulator has no Storage Control API, so
# gcsfs's bucket-layout lookup (hierarchical/zonal buckets) is switched off; TensorStore's
# fixed-token hook stops it from searching for (and sending) real credentials.
COMPANION_VARS = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                  "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}


class EmulatorEnvError(ValueError):
    """Emulator variables set where they must not reach the workers."""


def emulator_env(url: str) -> dict[str, str]:
    """Every variable that points this process's gs:// clients at the emulator at `url`."""
    return {**dict.fromkeys(URL_VARS, url), **COMPANION_VARS}


def emulator_urls(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The emulator URL variables set (non-empty) in `environ` (default: this process)."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in URL_VARS if environ.get(name)}


def is_loopback(url: str) -> bool:
    """True when `url` (or a bare host:port, as gcsfs accepts) names this machine."""
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_emulator_env(*, local_cluster: bool, environ: Mapping[str, str] | None = None) -> None:
    """Raise EmulatorEnvError when emulator variables are set but must not be used."""
    urls = emulator_urls(environ)
    if not urls:
        return
    names = " and ".join(urls)
    remote = [f"{name}={value}" for name, value in urls.items() if not is_loopback(value)]
    if remote:
        raise EmulatorEnvError(
            f"{remote[0]} is not a loopback address; only an emulator on this machine "
            f"(127.0.0.1, `palm gcs-emulator`) is passed to workers. Fix: unset {names}"
        )
    if not local_cluster:
        raise EmulatorEnvError(
            f"{names} set (a local GCS emulator), but the job runs on real TPU hosts, where "
            f"gs:// must be Google Cloud Storage. Fix: `unset {' '.join(urls)}`"
        )


def forwarded_env(*, local_cluster: bool, environ: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """The emulator variables to add to every worker's runtime env (see the module doc)."""
    environ = os.environ if environ is None else environ
    check_emulator_env(local_cluster=local_cluster, environ=environ)
    urls = emulator_urls(environ)
    if not urls:
        return {}
    companions = {name: environ[name] for name in COMPANION_VARS if name in environ}
    return {**urls, **companions}
