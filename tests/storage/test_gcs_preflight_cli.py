"""Every command that takes a gs:// path runs `palm run`'s pre-flight (storage/preflight.py):
with no credentials, GCS out of reach or a missing bucket, each says so in one line with the
fix and exits 2, before it touches the path (before: `palm ckpt list gs://B/ckpt` retried for
49 s, printed aiohttp tracebacks, then said "no such checkpoint directory"). No cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from palm_platform.storage import preflight
from tests.support.paths import ROOT

BIN = Path(sys.executable).parent
BUCKET = "gs://palm-real-bucket"


def _no_credentials(home: Path) -> dict[str, str]:
    """A shell with no Google credentials of any kind and no GCS emulator."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                        "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")}
    return env | {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud")}


def _job_with_gs_checkpoints(folder: Path, bucket: str) -> Path:
    spec = yaml.safe_load((ROOT / "tests" / "jobs" / "ray-2host.yaml").read_text())
    spec["run_dir"] = str(folder / "run")
    spec["checkpoint"]["directory"] = f"{bucket}/ckpt"
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _commands(tmp_path: Path, bucket: str) -> dict[str, list[str]]:
    """Each command with a gs:// path, as a user types it."""
    job = _job_with_gs_checkpoints(tmp_path, bucket)
    run_dir = tmp_path / "run" / "ray-2host"
    run_dir.mkdir(parents=True, exist_ok=True)
    return {
        "ckpt list": ["ckpt", "list", f"{bucket}/ckpt"],
        "ckpt verify": ["ckpt", "verify", f"{bucket}/ckpt"],
        "generate": ["generate", str(run_dir), "--job", str(job), "--prompt", "hi"],
        "eval": ["eval", str(run_dir), "--job", str(job), "--tasks", "palm_arithmetic"],
        "eval of a gs:// target": ["eval", f"{bucket}/run/ray-2host", "--tasks", "palm_arithmetic"],
        "status": ["status", f"{bucket}/run/ray-2host"],
    }


def _palm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "palm", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def _one_line_exit_2(done: subprocess.CompletedProcess, *expected: str) -> str:
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-2000:]
    assert "Traceback" not in said and len(done.stderr.strip().splitlines()) == 1, said[-2000:]
    assert "Fix:" in done.stderr and all(e in done.stderr for e in expected), done.stderr
    return done.stderr


@pytest.mark.parametrize("name", ["ckpt list", "ckpt verify", "generate", "eval",
                                  "eval of a gs:// target", "status"])
def test_without_credentials_each_command_says_so_in_one_line(name, tmp_path):
    env = _no_credentials(tmp_path)
    start = time.monotonic()
    line = _one_line_exit_2(_palm(_commands(tmp_path, BUCKET)[name], env),
                            "no Google Cloud credentials", "application-default login")
    assert "palm-real-bucket" in line  # it names the path it checked
    assert time.monotonic() - start < 30  # not 49 s of retries (the figure: the report)


@pytest.mark.parametrize("name", ["ckpt list", "generate", "status"])
def test_an_unreachable_gcs_emulator_is_named_in_one_line(name, tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = _no_credentials(tmp_path) | {"STORAGE_EMULATOR_HOST": url,
                                       "TENSORSTORE_GCS_HTTP_URL": url}
    _one_line_exit_2(_palm(_commands(tmp_path, BUCKET)[name], env),
                     f"cannot reach the GCS emulator at {url}", "palm gcs-emulator")


def test_a_missing_bucket_is_named_and_an_existing_one_gets_the_commands_own_answer(
        gcs_bucket, tmp_path):
    env = dict(os.environ)  # the emulator's variables, set by the gcs_bucket fixture
    _one_line_exit_2(_palm(["ckpt", "list", "gs://palm-no-such-bucket/ckpt"], env),
                     "bucket gs://palm-no-such-bucket does not exist")
    empty = _palm(["ckpt", "list", f"{gcs_bucket}/nothing-here"], env)
    # past the pre-flight: the command's own verdict, which is now true
    assert empty.returncode == 2 and "no such checkpoint directory" in empty.stderr, empty.stderr


def test_a_check_that_does_not_answer_is_cut_off_with_one_line():
    with pytest.raises(preflight.StorageConfigError) as error:
        preflight._bounded(lambda: time.sleep(60), 0.2, "directory: gs://b/ckpt")
    assert "no answer from Google Cloud Storage within" in str(error.value)
    assert "\n" not in str(error.value) and "Fix:" in str(error.value)


def test_a_check_that_fails_otherwise_is_one_line_too():
    def broken():
        raise RuntimeError("first line\nsecond line")

    with pytest.raises(preflight.StorageConfigError) as error:
        preflight._bounded(broken, 5, "directory: gs://b/ckpt")
    assert "\n" not in str(error.value) and "RuntimeError" in str(error.value)


def test_local_paths_are_not_checked():
    preflight.check_gcs_paths({"directory": "/tmp/ckpt", "x": "relative/path"})
    preflight.check_gcs_paths(["/tmp/a", "b"])
