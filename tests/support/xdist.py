"""What the workers of one pytest-xdist session (the fast tier, `-n auto`) share."""

from __future__ import annotations

import re
from pathlib import Path

_WORKER_BASETEMP = re.compile(r"popen-gw\d+")  # xdist gives each worker its own, in the session's


def session_root(tmp_path_factory) -> Path | None:
    """The base folder of this xdist session, shared by all its workers (each one's basetemp
    is a popen-gwN folder in it); None outside xdist. Read from the folder, not from
    PYTEST_XDIST_WORKER: a pytest that a test starts inherits that variable, not the session."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if _WORKER_BASETEMP.fullmatch(base.name) else None
