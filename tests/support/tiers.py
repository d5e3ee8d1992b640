"""The fast tier (`bash scripts/test.sh --fast`) leaves out the tests marked `ray` or
`multiprocess`. A test that starts a Ray cluster or extra JAX processes without its marker
would slip into the fast tier: the helpers that start them fail such a test at once."""

from __future__ import annotations

import os

MARKS = "PALM_TEST_MARKS"  # set by conftest.py for each test: the markers it carries


def require_marker(name: str, what: str) -> None:
    """Fail when the running test is not marked `name` (no check outside pytest)."""
    marks = os.environ.get(MARKS)
    if marks is not None and name not in marks.split(","):
        raise AssertionError(
            f"{what}: mark the test @pytest.mark.{name} (the fast tier, scripts/test.sh "
            f"--fast, runs only tests marked neither ray nor multiprocess)")
