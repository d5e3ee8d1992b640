"""The fast tier's guard: a helper that starts a Ray cluster or JAX worker processes fails a
test that lacks the marker the fast tier filters on (tests/support/tiers.py)."""

import os

import pytest

from tests.support.processes import spawn
from tests.support.tiers import MARKS, require_marker


@pytest.mark.slow
def test_this_tests_markers_are_what_the_helpers_read():
    assert os.environ[MARKS] == "slow"


@pytest.mark.slow
def test_a_test_without_the_marker_is_failed_with_the_fix():
    with pytest.raises(AssertionError, match=r"mark the test @pytest.mark.multiprocess"):
        spawn("-c", "pass", env={})
    with pytest.raises(AssertionError, match=r"@pytest.mark.ray"):
        require_marker("ray", "a test that starts a local Ray cluster")


@pytest.mark.multiprocess
def test_a_marked_test_may_start_processes():
    proc = spawn("-c", "print('ok')", env={})
    assert proc.communicate(timeout=60)[0].strip() == "ok"
