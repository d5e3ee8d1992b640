"""compat.py: the one door to Ray/JAX internals refuses versions it was not written for."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from palm_platform.ray import compat


def test_installed_versions_are_the_ones_compat_was_written_for():
    compat.check_versions()  # the pinned environment imports compat without complaint
    for name, pinned in compat.WRITTEN_FOR.items():
        assert importlib.metadata.version(name).split(".")[:2] == pinned.split(".")[:2]


def test_written_for_matches_the_pins_in_the_lock():
    lock = tomllib.loads((Path(__file__).resolve().parents[1] / "uv.lock").read_text())
    pins = {p["name"]: p["version"] for p in lock["package"] if p["name"] in ("ray", "jax")}
    assert compat.WRITTEN_FOR == {"ray": pins["ray"], "jax": pins["jax"]}


def test_another_patch_release_is_accepted():
    compat.check_versions({"ray": "2.60.7", "jax": "0.10.9"})


@pytest.mark.parametrize("installed, named", [
    ({"ray": "2.61.0", "jax": "0.10.2"}, "ray 2.61.0"),
    ({"ray": "2.60.0", "jax": "0.11.0"}, "jax 0.11.0"),
])
def test_another_minor_release_fails_with_one_line_naming_both_versions(installed, named):
    with pytest.raises(compat.IncompatibleVersionError) as caught:
        compat.check_versions(installed)
    message = str(caught.value)
    assert "\n" not in message
    assert named in message and "ray 2.60.0, jax 0.10.2" in message
    assert "uv.lock" in message  # and the fix


def test_importing_compat_under_an_unknown_ray_fails_before_touching_ray_internals():
    # A real import in a fresh interpreter whose ray reports another release.
    code = (
        "import importlib.metadata as m, sys\n"
        "real = m.version\n"
        "m.version = lambda name: '3.0.0' if name == 'ray' else real(name)\n"
        "try:\n"
        "    import palm_platform.ray.compat\n"
        "except RuntimeError as err:\n"
        "    print(type(err).__name__, err)\n"
        "    print('ray.train' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[0].startswith("IncompatibleVersionError ") and "ray 3.0.0" in out[0]
    assert out[1] == "False"  # the check ran before any private Ray module was imported


def _printed(lines: list[str]) -> list[str]:
    """What Ray's driver-side deduplicator lets through of a worker's lines."""
    from ray._private.ray_logging import stdout_deduplicator

    return [line for batch in stdout_deduplicator.deduplicate(
        {"ip": "127.0.0.1", "pid": 1, "lines": lines}) for line in batch["lines"]]


def test_the_driver_drops_gloo_connection_lines_whole_or_torn_and_keeps_ours():
    gloo = (
        "[Gloo] Rank 2 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3"
    )
    ours = ["2026-12-01 21:33:24,258 palm step 4/35 loss 7.1 tokens/s 2000 mfu 0.25%",
            "2026-12-01 21:33:25,001 palm host 2/4: lost a peer during step 25 (gloo: Read error)"]
    torn = [gloo[:30] + gloo, "1 peer ranks. Expected number of connected peer ranks is : 1",
            "4 is connected to 7 peer ranks. Expected number", ""]
    assert _printed([gloo, *torn, *ours]) == ours


def test_a_users_own_skip_pattern_is_kept(monkeypatch):
    monkeypatch.setenv("RAY_DEDUP_LOGS_SKIP_REGEX", "my noise")
    try:
        compat.drop_never_printed_lines()
        assert _printed(["my noise here", "[Gloo] Rank 0 is connected", "kept"]) == ["kept"]
    finally:
        monkeypatch.delenv("RAY_DEDUP_LOGS_SKIP_REGEX")
        compat.drop_never_printed_lines()  # back to ours alone for the rest of the session
