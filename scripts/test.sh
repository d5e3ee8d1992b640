#!/usr/bin/env bash
# Sets up .venv if needed, checks lint and the package layers, then runs the test suite.
#   bash scripts/test.sh            # everything (slow cluster tests included): CI runs this
#   bash scripts/test.sh --fast     # the fast tier: every test that starts no Ray cluster and
#                                   # no extra JAX process (markers ray, multiprocess): minutes
# Other arguments go to pytest, e.g. `bash scripts/test.sh tests/data -k store`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the layers contract in pyproject.toml ([tool.importlinter])
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then
    # over every core (pytest-xdist), a test file per worker at a time (its module fixtures
    # built once): these tests share no cluster, port or fixed path; the workers share the
    # session's compilation cache and the eval tests' trained run (tests/conftest.py,
    # tests/support/eval_runs.py), each under a file lock
    args+=(-m "not ray and not multiprocess" -n auto --dist loadfile)
  else
    args+=("$arg")
  fi
done
set +e
.venv/bin/python -m pytest "${args[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
