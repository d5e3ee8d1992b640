"""compat/: one door per library's internals (Ray, JAX, Orbax), each refusing a release it was
not written for, in one line, before it touches anything private."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib

import pytest

from palm_platform.compat import IncompatibleVersionError, check_written_for
from tests.support.paths import ROOT

# door -> the distribution it reaches into
DOORS = {"ray": "ray", "jax": "jax", "orbax": "orbax-checkpoint"}


def _door(name: str):
    return importlib.import_module(f"palm_platform.compat.{name}")


@pytest.mark.parametrize("door, distribution", DOORS.items())
def test_each_door_was_written_for_the_release_the_lock_pins(door, distribution):
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    pinned = next(p["version"] for p in lock["package"] if p["name"] == distribution)
    assert _door(door).WRITTEN_FOR == pinned
    installed = importlib.metadata.version(distribution)
    assert installed.split(".")[:2] == pinned.split(".")[:2]


def test_another_patch_release_is_accepted():
    check_written_for("ray", "ray", "2.60.0", installed="2.60.7")
    check_written_for("orbax", "orbax-checkpoint", "0.12.8", installed="0.12.11")


@pytest.mark.parametrize("installed", ["2.61.0", "3.0.0", "2.59.9"])
def test_another_minor_release_fails_with_one_line_naming_both_releases_and_the_fix(installed):
    with pytest.raises(IncompatibleVersionError) as caught:
        check_written_for("ray", "ray", "2.60.0", installed=installed)
    message = str(caught.value)
    assert "\n" not in message
    assert f"found ray {installed}" in message and "written for ray 2.60.0" in message
    assert "compat/ray.py" in message and "uv.lock" in message  # the door and the fix


# A real import of each door in a fresh interpreter whose library reports another release:
# it fails, and before any private module of that library was loaded.
@pytest.mark.parametrize("door, distribution, private", [
    ("ray", "ray", "ray._private.accelerators"),
    ("jax", "jax", "jax._src.distributed"),
    ("orbax", "orbax-checkpoint", "orbax.checkpoint._src.metadata.array_metadata_store"),
])
def test_importing_a_door_under_an_unknown_release_fails_before_touching_internals(
        door, distribution, private):
    code = (
        "import importlib.metadata as m, sys\n"
        "real = m.version\n"
        f"m.version = lambda name: '99.0.0' if name == {distribution!r} else real(name)\n"
        "try:\n"
        f"    import palm_platform.compat.{door}\n"
        "    print('imported')\n"
        "except RuntimeError as err:\n"
        "    print(type(err).__name__, err)\n"
        f"print({private!r} in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": ""}).stdout.splitlines()
    assert out[0].startswith("IncompatibleVersionError ") and f"{distribution} 99.0.0" in out[0]
    assert out[1] == "False"


def test_palm_run_refuses_to_start_under_an_unknown_release_with_the_doors_line(tmp_path):
    # `palm run` imports every door before it connects: a worker would otherwise fail later.
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '0.99.0' if name == 'orbax-checkpoint' else real(name)\n"
        "import types\n"
        "from pathlib import Path\n"
        "from palm_platform.ray.run import run_on_ray\n"
        f"print(run_on_ray(types.SimpleNamespace(name='j'), Path({str(tmp_path)!r}), None))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert run.stdout.strip().splitlines()[-1] == "2", run.stderr[-2000:]
    assert run.stderr.strip().startswith("j: cannot start: palm_platform/compat/orbax.py was "
                                         "written for orbax-checkpoint 0.12.8 but found "
                                         "orbax-checkpoint 0.99.0"), run.stderr[-2000:]


def test_the_doors_import_no_library_until_a_function_is_called():
    code = ("import sys\n"
            "import palm_platform.compat.ray, palm_platform.compat.jax, "
            "palm_platform.compat.orbax\n"
            "print(sorted(m for m in ('ray', 'jax', 'orbax') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert out.stdout.strip() == "[]"
