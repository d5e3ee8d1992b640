"""One door per library whose private API the platform touches: ray.py, jax.py, orbax.py.

Each door holds only the touches of its library's internals (private modules, underscored
names, experimental flags), names the release it was written for (the one uv.lock pins) and
checks the installed release when it is imported, before it touches anything private. A
library upgrade then breaks in one place with one line, instead of as a silent change of
behaviour somewhere in a run.

Policy: a different minor release is an error (IncompatibleVersionError), not a warning.
Each touch replaces or reads something the library may rename or change in meaning between
minor releases (a printer, a barrier, a topology table), and the failure would surface late
and far away (a hung save, a lost worker line, a slice Ray rejects mid-launch); the fix is one
command (install the pins) or a deliberate re-check of the door. A different patch release is
accepted: these internals changed only across minor releases.
"""

from __future__ import annotations

import importlib.metadata


class IncompatibleVersionError(RuntimeError):
    """A library is a release its door's private touches were not checked against."""


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_written_for(door: str, distribution: str, written_for: str,
                      installed: str | None = None) -> None:
    """Raise IncompatibleVersionError (one line: both releases and the fix) unless the
    installed `distribution` is the minor release `door` was written for."""
    if installed is None:
        installed = importlib.metadata.version(distribution)
    if _minor(installed) != _minor(written_for):
        raise IncompatibleVersionError(
            f"palm_platform/compat/{door}.py was written for {distribution} {written_for} but "
            f"found {distribution} {installed}; install the versions uv.lock pins (bash "
            f"scripts/setup.sh), or re-check compat/{door}.py against the new release and "
            "update its WRITTEN_FOR.")
