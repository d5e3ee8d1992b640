"""The run folder's paths are named once, in palm_platform.run_dir.RunDir."""

import ast
from pathlib import Path

from palm_platform.run_dir import RunDir
from tests.support.paths import ROOT

PLATFORM = ROOT / "platform"
NAMES = {"metrics.jsonl", "ledger.json", "goodput.json", "summary.json", "attempts",
         "job.json", "eval_split.json", "compile-cache"}


def test_run_dir_names_the_files_the_commands_read():
    run = RunDir.of(type("Job", (), {"run_dir": "runs", "name": "demo"})())
    assert run.path == Path("runs/demo")
    assert run.metrics == Path("runs/demo/metrics.jsonl")
    assert run.ledger == Path("runs/demo/ledger.json")
    assert run.logs / "workers.log" == Path("runs/demo/logs/workers.log")
    assert run.ray == Path("runs/demo/ray")


def test_no_module_but_run_dir_spells_a_run_folder_file_name():
    spelled = []
    for path in PLATFORM.rglob("*.py"):
        if path.name == "run_dir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                spelled.append(f"{path.relative_to(PLATFORM)}:{node.lineno} {node.value!r}")
    assert not spelled, "use RunDir for: " + "; ".join(spelled)
