"""The persistent compilation cache: a second process loads what the first compiled, and the
job field that places it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from palm_platform.job import load_job
from tests.support.paths import ROOT

COMPILE = """
import json, sys
import jax, jax.numpy as jnp
from palm_platform.train.compile_cache import CompileCache
cache = CompileCache.enable(sys.argv[1])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0)
f(jnp.ones((64, 32))).block_until_ready()
print(json.dumps(cache.counts()))
"""


def compile_in_a_new_process(directory: Path) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", COMPILE, str(directory)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_second_process_hits_what_the_first_compiled(tmp_path):
    first = compile_in_a_new_process(tmp_path / "cache")
    assert first["hits"] == 0 and first["misses"] >= 1
    assert any((tmp_path / "cache").iterdir())
    second = compile_in_a_new_process(tmp_path / "cache")
    assert second == {**second, "hits": first["misses"], "misses": 0}


def test_cache_off_compiles_without_writing(tmp_path):
    counts = compile_in_a_new_process("off")
    assert counts["hits"] == 0 and counts["misses"] == 0  # no request used a cache


def test_compile_cache_field_defaults_to_the_run_folder_and_resolves_paths(tmp_path):
    spec = yaml.safe_load((ROOT / "jobs" / "local-cpu.yaml").read_text())
    spec["train"].pop("compile_cache")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_job(path).train.compile_cache is None  # the Trainer uses RUN_DIR/NAME/compile-cache
    for value, expected in (("cache", str(tmp_path / "cache")), ("off", "off"),
                            ("gs://bucket/palm/compile-cache", "gs://bucket/palm/compile-cache")):
        spec["train"]["compile_cache"] = value
        path.write_text(yaml.safe_dump(spec))
        assert load_job(path).train.compile_cache == expected


def test_the_demo_job_keeps_its_cache_outside_the_run_folder_it_moves_aside():
    job = load_job(ROOT / "jobs" / "local-cpu.yaml")
    assert job.train.compile_cache == str(ROOT / "runs" / "compile-cache" / "local-cpu")


def test_pod_jobs_share_one_cache_on_gcs():
    for name in ("palm8b", "palm62b", "palm540b"):
        assert load_job(ROOT / "jobs" / f"{name}.yaml").train.compile_cache.startswith("gs://")
