"""A local GCS server (PyPI `gcp-storage-emulator`) for tests, benchmarks and the demo.

    with gcs_emulator(bucket="palm-local") as emulator:   # 127.0.0.1, a free port, in memory
        os.environ.update(emulator.env)                  # gcsfs, TensorStore -> the emulator
        Checkpointer(config, directory="gs://palm-local/ckpt")

    palm gcs-emulator --bucket palm-local                # the same, in the foreground

The emulator runs in its own process (its HTTP server is single-threaded Python: kept off
the caller's GIL) and serves from memory, so stopping it drops every object. It speaks the
GCS JSON API that both gs:// clients of the platform use: gcsfs (etils/Orbax paths, fsspec
data readers, the tokenizer) finds it through STORAGE_EMULATOR_HOST, TensorStore (Orbax's
array data) through TENSORSTORE_GCS_HTTP_URL. See `storage/env.py` for how those variables
reach the Ray workers, and why only to local ones.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from palm_platform.storage.env import emulator_env

HOST = "127.0.0.1"  # local services bind to loopback only
DEFAULT_BUCKET = "palm-local"
_START_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class Emulator:
    """A running emulator: its URL, its first bucket, the PID that serves it."""

    url: str
    bucket: str
    pid: int
    log_path: str

    @property
    def env(self) -> dict[str, str]:
        """The variables that point gcsfs and TensorStore at this emulator."""
        return emulator_env(self.url)

    def create_bucket(self, name: str) -> str:
        """Create another bucket (the JSON API's buckets.insert); returns gs://NAME."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=local",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
        return f"gs://{name}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _serving(url: str, bucket: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def clear_client_caches() -> None:
    """fsspec caches one GCSFileSystem per set of arguments, endpoint not included: drop it
    so the next gs:// access reads STORAGE_EMULATOR_HOST again (a new emulator, a new port)."""
    gcsfs = sys.modules.get("gcsfs")
    if gcsfs is not None:
        gcsfs.GCSFileSystem.clear_instance_cache()


def _start(bucket: str, log_file) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "palm_platform.storage.emulator_server", "start",
               f"--host={HOST}", f"--default-bucket={bucket}", "--in-memory", "--quiet"]
    for _ in range(3):  # the free port may be taken between the probe and the bind: retry
        url = f"http://{HOST}:{_free_port()}"
        process = subprocess.Popen([*command, f"--port={url.rsplit(':', 1)[1]}"],
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _serving(url, bucket):
                return process, url
            time.sleep(0.1)
        _stop(process)
    raise RuntimeError(f"the GCS emulator did not start on {HOST}; see {log_file.name}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # its own handler shuts the server down
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def gcs_emulator(
    bucket: str = DEFAULT_BUCKET, *, log_path: str | None = None
) -> Iterator[Emulator]:
    """Start an in-memory emulator on 127.0.0.1 (a free port) with `bucket`; stop it on exit.

    Its request log (tracebacks of clients closing connections early included: harmless)
    goes to `log_path`, by default a temporary file, never to the terminal.
    """
    if log_path is None:
        handle, log_path = tempfile.mkstemp(prefix="palm-gcs-emulator-", suffix=".log")
        os.close(handle)
    with open(log_path, "ab") as log_file:
        process, url = _start(bucket, log_file)
        clear_client_caches()
        try:
            yield Emulator(url=url, bucket=bucket, pid=process.pid, log_path=log_path)
        finally:
            _stop(process)
            clear_client_caches()


# -- `palm gcs-emulator` ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", default=DEFAULT_BUCKET,
                        help=f"bucket to create (default {DEFAULT_BUCKET}; 3-63 characters)")
    parser.add_argument("--log", default=None, help="request log file (default: a temp file)")


def main(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; print the variables to export where `palm run` runs."""
    if not 3 <= len(args.bucket) <= 63:
        print(f"error: --bucket {args.bucket!r}: GCS bucket names have 3-63 characters",
              file=sys.stderr)
        return 2
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    with gcs_emulator(args.bucket, log_path=args.log) as emulator:
        # The try starts before the "Ctrl-C" line: a user (or a test) may press it at once.
        try:
            print(f"GCS emulator on {emulator.url}, bucket gs://{emulator.bucket} (in memory; "
                  f"log {emulator.log_path}). In another shell:")
            for name, value in emulator.env.items():
                print(f"  export {name}={value}")
            print("Ctrl-C stops it (and drops every object).", flush=True)
            while not stopped:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    print("GCS emulator stopped")
    return 0
