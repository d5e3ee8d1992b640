"""Compiler flags as part of the job: defaults per TPU generation, what the hosts get, and
libtpu's own sentence (exit 2, no traceback) for a flag it rejects, from `palm plan` and
`palm run` alike."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from palm_platform.compiler_flags import DEFAULTS, effective, init_args, parse
from palm_platform.job import JobError, load_job
from palm_platform.ray.launch import worker_env
from tests.support.paths import TEST_JOBS

JOBS = TEST_JOBS
PALM = Path(sys.executable).parent / "palm"


def job_file(tmp_path: Path, name: str, **topology) -> Path:
    spec = yaml.safe_load((JOBS / name).read_text())
    spec["topology"].update(topology)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_every_default_names_its_source():
    for generation, flags in DEFAULTS.items():
        assert flags, generation
        for name, flag in flags.items():
            assert name.startswith("xla_") and len(flag.source) > 20, name


def test_v4_jobs_get_async_all_gather_and_the_job_overrides_a_default_by_name():
    assert effective("tpu-v4", {}) == {"xla_enable_async_all_gather": True}
    assert effective("tpu-v4", {"xla_enable_async_all_gather": False, "xla_b": 4}) == {
        "xla_b": 4, "xla_enable_async_all_gather": False}
    assert init_args({"xla_a": True, "xla_b": 4, "xla_c": "auto"}) == (
        "--xla_a=true --xla_b=4 --xla_c=auto")
    assert parse("--xla_a=false xla_b=4 --xla_c") == {"xla_a": False, "xla_b": 4, "xla_c": True}


def test_a_flag_that_is_not_a_flag_name_fails_at_load_naming_the_field(tmp_path):
    path = job_file(
        tmp_path, "plan-tiny.yaml", compiler_flags={"--xla_enable_async_all_gather": True}
    )
    with pytest.raises(JobError) as error:
        load_job(path)
    assert "topology" in str(error.value) and "without the leading --" in str(error.value)


def test_tpu_hosts_get_the_flags_as_libtpu_init_args_and_fake_tpu_hosts_do_not():
    args = "--xla_enable_async_all_gather=true"
    tpu = worker_env(chips_per_host=4, fake_tpu=False, env=None, libtpu_init_args=args)
    assert tpu["LIBTPU_INIT_ARGS"] == args and "JAX_PLATFORMS" not in tpu
    cpu = worker_env(chips_per_host=4, fake_tpu=True, env=None, libtpu_init_args=args)
    assert "LIBTPU_INIT_ARGS" not in cpu and cpu["JAX_PLATFORMS"] == "cpu"


def palm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PALM, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
@pytest.mark.usefixtures("libtpu")
def test_palm_run_stops_on_an_unknown_flag_before_any_worker_starts(tmp_path):
    # A TPU job (not the local cluster): its hosts would get the flag in LIBTPU_INIT_ARGS.
    path = job_file(tmp_path, "ray-2host.yaml", local=False,
                    compiler_flags={"xla_no_such_flag": True})
    result = palm("run", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "No such compile option: 'xla_no_such_flag'" in result.stderr  # libtpu's sentence
    assert "topology.compiler_flags" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
@pytest.mark.usefixtures("libtpu")
def test_palm_plan_stops_on_a_flag_libtpu_does_not_support_on_v4(tmp_path):
    # MaxText's v5e flag: libtpu refuses it for v4 (and says so); plan never compiles the step.
    path = job_file(tmp_path, "plan-tiny.yaml", compiler_flags={
        "xla_tpu_enable_async_collective_fusion_fuse_all_gather": True})
    result = palm("plan", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "not supported/recommended on platforms other than TPU v5e" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    bad_compare = palm("plan", str(JOBS / "plan-tiny.yaml"), "--compare=--xla_no_such_flag=1",
                       cwd=tmp_path)
    assert bad_compare.returncode == 2 and "--compare" in bad_compare.stderr
    assert "No such compile option: 'xla_no_such_flag'" in bad_compare.stderr


HLO_OF_THE_CHECK_PROGRAM = """
import sys
from palm_platform.plan.compiler_flags_check import tiny_step
options = {"xla_enable_async_all_gather": "true"} if sys.argv[1] == "options" else None
print(tiny_step().compile(compiler_options=options).as_text())
"""


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
@pytest.mark.usefixtures("libtpu")
def test_libtpu_init_args_and_per_compile_options_give_the_same_program():
    # The hosts get LIBTPU_INIT_ARGS; --compare and the flag check use compile options.
    def hlo(how: str, init: str = "") -> str:
        env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "LIBTPU_INIT_ARGS": init}
        result = subprocess.run([sys.executable, "-c", HLO_OF_THE_CHECK_PROGRAM, how], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    by_env = hlo("env", init_args({"xla_enable_async_all_gather": True}))
    by_options, without = hlo("options"), hlo("env")
    assert "all-gather-start" in by_env and "all-gather-start" not in without
    assert by_env == by_options


@pytest.mark.multiprocess  # a `palm`/JAX process besides pytest's
@pytest.mark.slow
@pytest.mark.usefixtures("libtpu")
def test_plan_compare_compiles_the_step_again_with_the_flags_over_the_jobs(tmp_path):
    import json

    result = palm("plan", str(JOBS / "plan-tiny.yaml"), "--json",
                  "--compare=--xla_enable_async_all_gather=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    job_line, compare_line = result.stdout.strip().splitlines()[-2:]
    job, compare = json.loads(job_line), json.loads(compare_line)["compare"]
    assert compare["flags"] == {"xla_enable_async_all_gather": False}
    other = compare["plan"]
    assert job["compiler_flags"] == {"xla_enable_async_all_gather": True}
    assert other["compiler_flags"] == {"xla_enable_async_all_gather": False}
    # The job's all-gathers are overlapped; with the default turned off none is.
    gathered, without = job["collectives"]["ici/all-gather"], other["collectives"]["ici/all-gather"]
    assert gathered["overlapped_bytes"] > 0.9 * gathered["bytes"]
    assert without["overlapped_bytes"] == 0 and without["bytes"] == gathered["bytes"]
    assert other["step_time"]["exposed_s"] > job["step_time"]["exposed_s"]
