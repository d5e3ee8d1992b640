"""`scripts/demo.sh`, the README's first command, checked without running it.

Running it costs about 5 minutes on 2 cores (4 fake hosts, 60 steps): too much for every CI
run, and the code it drives (cluster up, `palm run` of a 2-pod job with a killed host and a
poisoned batch) is run by tests/ray/test_ray_promises.py and tests/ray/test_run_ray.py. What only
the script can break is checked here: its bash parses, every `palm` command it runs exists
with the flags it passes (parsed by palm's own argument parsers), the cluster it brings up
has the shape its job asks for, the folder it moves aside is the job's run folder, the job
validates with its data, and the README's description of the demo matches the job.
"""

import argparse
import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from palm_platform.cli import SUBCOMMANDS
from tests.support.paths import ROOT

DEMO = ROOT / "scripts" / "demo.sh"


def palm_commands(script: str) -> list[list[str]]:
    """Every `palm ...` command line of the script (the echo's hint included), as argv."""
    found = []
    code = "\n".join(ln for ln in script.splitlines() if not ln.lstrip().startswith("#"))
    for match in re.finditer(r"\bpalm ([a-z][^;|&>()'\n]*)", code):
        argv = [a for a in shlex.split(match.group(1)) if a != "$@"]
        found.append(argv)
    return found


def parse(argv: list[str]) -> argparse.Namespace:
    """argv through the subcommand's own parser, as `palm` would (exit 2 on a bad flag)."""
    name, rest = argv[0], argv[1:]
    assert name in SUBCOMMANDS, f"demo.sh runs `palm {name}`, which does not exist"
    parser = argparse.ArgumentParser(prog=f"palm {name}")
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(parser)
    return parser.parse_args(rest)


@pytest.fixture(scope="module")
def demo():
    script = DEMO.read_text()
    commands = {" ".join(argv[:2]): parse(argv) for argv in palm_commands(script)}
    from palm_platform.job import load_job

    (job_arg,) = [argv[1] for argv in palm_commands(script) if argv[0] == "run"]
    return script, commands, load_job(ROOT / job_arg)


def test_demo_script_parses_as_bash():
    check = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_every_palm_command_of_the_demo_exists_with_its_flags(demo):
    _, commands, _ = demo
    # status (is a cluster up?), up, down on exit, the run, and the hint it prints at the end
    assert {"cluster status", "cluster up", "cluster down", "status runs/local-cpu"} <= set(
        commands
    )
    assert any(key.startswith("run ") for key in commands), commands


def test_the_cluster_the_demo_brings_up_fits_its_job(demo):
    _, commands, job = demo
    up = commands["cluster up"]
    topo = job.topology
    assert (up.pods, up.hosts_per_pod, up.chips_per_host) == \
        (topo.pods, topo.hosts_per_pod, topo.chips_per_host)
    assert topo.local  # `palm run` may also start it itself


def test_the_folder_the_demo_moves_aside_is_the_job_run_folder(demo):
    script, commands, job = demo
    # otherwise a second demo resumes at the first one's last step instead of starting afresh
    moved = re.search(r"mv (\S+) ", script).group(1)
    run_folder = Path(job.run_dir) / job.name
    assert (ROOT / moved).resolve() == run_folder.resolve()
    assert run_folder.resolve() in Path(job.checkpoint.directory).resolve().parents
    assert (ROOT / commands["status runs/local-cpu"].run_dir).resolve() == run_folder.resolve()


def test_the_demo_job_has_its_data_and_matches_the_readme(demo):
    _, _, job = demo
    from palm_platform.data.pipeline import check_data

    check_data(job.data, ROOT)
    readme = (ROOT / "README.md").read_text()
    said = re.search(r"trains a tiny PaLM for (\d+) steps over (\d+) pods x (\d+) hosts x (\d+) "
                     r"CPU \"chips\".*?kills a host at\s+step (\d+) and poisons the data at step "
                     r"(\d+)", readme, re.S)
    assert said, "README no longer describes the demo where this test looks"
    steps, pods, hosts, chips, kill, poison = map(int, said.groups())
    topo = job.topology
    assert (steps, pods, hosts, chips) == \
        (job.train.steps, topo.pods, topo.hosts_per_pod, topo.chips_per_host)
    faults = {f.kind: f.step for f in job.faults.inject}
    assert faults == {"kill_host": kill, "poison_batches": poison}
    assert job.model.preset == "palm-tiny"
