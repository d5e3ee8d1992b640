"""Where the tests find the repository, their job files and their worker scripts (one place,
so a test file can live in any folder of tests/)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
TEST_JOBS = ROOT / "tests" / "jobs"  # the tests' own small job files
SUPPORT = Path(__file__).resolve().parent  # worker scripts that tests start as processes
