"""The package layers (pyproject's [tool.importlinter], checked by `lint-imports` in
scripts/test.sh) name every package and top-level module of palm_platform: a new one outside
every layer would be checked by nobody. import-linter cannot say so itself here: its
`exhaustive` option needs a container module, and palm_platform is a namespace package (no
`platform/__init__.py`, so that it never shadows the standard library's `platform`)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.paths import ROOT


def _layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [set(re.split(r"\s*[|:]\s*", layer.strip())) for layer in contract["layers"]]


def _children() -> set[str]:
    platform = ROOT / "platform"
    packages = {p.name for p in platform.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in platform.glob("*.py")}
    return {f"palm_platform.{name}" for name in packages | modules}


def test_every_package_and_module_of_palm_platform_is_in_a_layer():
    named = set().union(*_layers())
    assert _children() - named == set(), "add it to a layer in pyproject.toml"
    assert "palm" in named


def test_no_name_is_in_two_layers():
    layers = _layers()
    assert sum(len(layer) for layer in layers) == len(set().union(*layers))


def test_lint_imports_keeps_the_layers():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout
