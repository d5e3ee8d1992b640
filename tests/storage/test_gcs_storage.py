"""gs:// data and tokenizer reads, the emulator variables' route to workers, and the gs://
pre-flight of `palm run` (bad bucket, no credentials, no gcsfs), against a local emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
import yaml

from palm_platform.data.config import DataConfig
from palm_platform.data.corpus import TOKENIZER_PATH
from palm_platform.data.pipeline import check_data
from palm_platform.data.readers import ReadStats, expand_path, iter_documents
from palm_platform.data.tokenizer import load_tokenizer
from palm_platform.storage.env import EmulatorEnvError, forwarded_env
from tests.support.paths import ROOT

BIN = Path(sys.executable).parent


def test_a_data_source_and_the_tokenizer_are_read_from_gs(gcs_bucket):
    records = [{"text": f"document {i} on gcs"} for i in range(3)]
    fsspec.filesystem("gs").pipe({
        f"{gcs_bucket}/corpus/a.jsonl": "\n".join(json.dumps(r) for r in records).encode(),
        f"{gcs_bucket}/corpus/b.jsonl": b'{"text": "second file"}\nnot json\n',
        f"{gcs_bucket}/tok/palm.model": TOKENIZER_PATH.read_bytes(),
    })
    files = expand_path(f"{gcs_bucket}/corpus/*.jsonl")
    assert files == [f"{gcs_bucket}/corpus/a.jsonl", f"{gcs_bucket}/corpus/b.jsonl"]
    stats = ReadStats()
    documents = [d for f in files for d in iter_documents(f, "auto", "text", stats)]
    assert documents == ["document 0 on gcs", "document 1 on gcs", "document 2 on gcs",
                         "second file"]
    assert stats.bad["bad_json"] == 1

    tokenizer = load_tokenizer(f"{gcs_bucket}/tok/palm.model")
    assert tokenizer.sha256 == load_tokenizer(str(TOKENIZER_PATH)).sha256
    assert tokenizer.decode(tokenizer.encode("  x = 12\n")) == "  x = 12\n"

    config = DataConfig(tokenizer=f"{gcs_bucket}/tok/palm.model",
                        sources=[{"name": "gcs", "paths": [f"{gcs_bucket}/corpus"], "weight": 1}])
    _, resolved = check_data(config, Path.cwd())  # what `palm run` checks before it starts
    assert resolved[0].paths == [f"{gcs_bucket}/corpus"]


LOCAL = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023",
         "TENSORSTORE_GCS_HTTP_URL": "http://127.0.0.1:9023",
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "PATH": "/usr/bin"}


def test_emulator_variables_reach_workers_of_the_local_cluster_only():
    assert forwarded_env(local_cluster=True, environ=LOCAL) == {
        k: v for k, v in LOCAL.items() if k != "PATH"}
    assert forwarded_env(local_cluster=False, environ={"PATH": "/usr/bin"}) == {}
    with pytest.raises(EmulatorEnvError, match="real TPU hosts.*unset STORAGE_EMULATOR_HOST"):
        forwarded_env(local_cluster=False, environ=LOCAL)
    remote = {**LOCAL, "TENSORSTORE_GCS_HTTP_URL": "http://10.0.0.7:9023"}
    with pytest.raises(EmulatorEnvError, match="10.0.0.7:9023 is not a loopback address"):
        forwarded_env(local_cluster=True, environ=remote)


def _job(folder: Path, checkpoint_dir: str, *, local: bool = True) -> Path:
    spec = yaml.safe_load((ROOT / "tests" / "jobs" / "ray-2host.yaml").read_text())
    spec["run_dir"] = str(folder / "run")
    spec["checkpoint"]["directory"] = checkpoint_dir
    spec["topology"]["local"] = local
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _palm_run(job: Path, env: dict, *prefix: str) -> subprocess.CompletedProcess:
    env = {**env, "RAY_ADDRESS": "127.0.0.1:1"}  # no cluster: the checks must come first
    command = [*prefix, str(job)] if prefix else [str(BIN / "palm"), "run", str(job)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_a_bucket_that_does_not_exist_fails_before_any_worker(gcs_bucket, tmp_path):
    job = _job(tmp_path, "gs://palm-no-such-bucket/ckpt")
    start = time.monotonic()
    run = _palm_run(job, dict(os.environ))
    assert run.returncode == 2, run.stderr
    assert (
        "checkpoint.directory" in run.stderr
        and "gs://palm-no-such-bucket does not exist" in run.stderr
    )
    assert "Fix:" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 30


def test_no_credentials_fail_before_any_worker(tmp_path):
    job = _job(tmp_path, "gs://palm-real-bucket/ckpt")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                        "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")}
    env |= {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
    run = _palm_run(job, env)
    assert run.returncode == 2, run.stderr
    assert "no Google Cloud credentials" in run.stderr and "application-default login" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_gs_path_without_gcsfs_fails_before_any_worker(tmp_path):
    job = _job(tmp_path, "gs://palm-bucket/ckpt")
    without_gcsfs = ("import sys; sys.modules['gcsfs'] = None; "  # as if it were not installed
                     "from palm_platform.cli import main; sys.exit(main(['run', sys.argv[1]]))")
    run = _palm_run(job, dict(os.environ), sys.executable, "-c", without_gcsfs)
    assert run.returncode == 2, run.stderr
    assert "checkpoint.directory: gs://palm-bucket/ckpt" in run.stderr and "gcsfs" in run.stderr
    assert "scripts/setup.sh" in run.stderr


def test_emulator_variables_with_a_job_on_real_tpu_hosts_are_refused(tmp_path):
    job = _job(tmp_path, str(tmp_path / "ckpt"), local=False)
    run = _palm_run(job, {**os.environ, **LOCAL, "PATH": os.environ["PATH"]})
    assert run.returncode == 2, run.stderr
    assert "topology.local" in run.stderr and "real TPU hosts" in run.stderr


def test_palm_gcs_emulator_serves_its_bucket_on_loopback_until_interrupted():
    import signal
    import urllib.request

    # Ctrl-C as a terminal delivers it: the SIGINT default, whatever this pytest inherited
    # (a runner in the background of a non-interactive shell passes SIGINT down ignored)
    proc = subprocess.Popen([str(BIN / "palm"), "gcs-emulator", "--bucket", "palm-cli"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        exports = {}
        for line in proc.stdout:
            if line.strip().startswith("export "):
                name, value = line.split(None, 1)[1].strip().split("=", 1)
                exports[name] = value
            if line.startswith("Ctrl-C"):
                break
        url = exports["STORAGE_EMULATOR_HOST"]
        assert url.startswith("http://127.0.0.1:") and exports["TENSORSTORE_GCS_HTTP_URL"] == url
        with urllib.request.urlopen(f"{url}/storage/v1/b/palm-cli", timeout=5) as response:
            assert json.loads(response.read())["name"] == "palm-cli"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "GCS emulator stopped" in proc.stdout.read()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/storage/v1/b/palm-cli", timeout=2)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_jax_compilation_cache_on_gs_is_written_and_read_back(gcs_bucket):
    # The pods' compile cache (issue 13) is a gs:// folder too: JAX reaches it through etils
    # and gcsfs, so the same emulator variables serve it. Two processes: the second one hits.
    program = (
        "import sys, logging, jax, jax.numpy as jnp\n"
        "logging.basicConfig(level=logging.DEBUG, format='%(message)s')\n"
        "jax.config.update('jax_compilation_cache_dir', sys.argv[1])\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "print(float(jax.jit(lambda x: (x @ x).sum())(jnp.ones((32, 32)))))\n"
    )
    cache = f"{gcs_bucket}/compile-cache"
    runs = [subprocess.run([sys.executable, "-c", program, cache], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
            for _ in range(2)]
    assert all(r.returncode == 0 and "32768.0" in r.stdout for r in runs), runs[-1].stderr[-2000:]
    entries = fsspec.filesystem("gs").find(cache)
    assert any("jit__lambda" in e for e in entries), entries
    assert "Persistent compilation cache hit for 'jit__lambda'" in runs[1].stderr
    assert "Persistent compilation cache hit for 'jit__lambda'" not in runs[0].stderr
