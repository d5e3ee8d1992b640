"""The repository layout must not shadow the standard library's `platform` module."""

import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def test_stdlib_platform_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system(), platform.__file__)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    system, path = out.split()
    assert system and system != "None"
    assert not Path(path).is_relative_to(ROOT), f"stdlib platform shadowed by {path}"


def test_pytest_from_repo_root_imports_stdlib_platform():
    # `python -m pytest` puts the repository root first on sys.path: the trap in DESIGN.md.
    probe = ROOT / "tests" / "_probe_platform.py"
    probe.write_text(
        "import platform\n"
        "def test_probe():\n"
        "    assert callable(platform.system) and platform.system()\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
            cwd=ROOT, capture_output=True, text=True,
        )
    finally:
        probe.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_names_map_to_folders():
    import palm
    import palm_platform

    assert Path(palm.__file__).parent == ROOT / "model"
    assert ROOT / "platform" in [Path(p) for p in palm_platform.__path__]


def test_palm_console_script_runs():
    exe = Path(sys.executable).parent / "palm"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "model-info" in result.stdout
