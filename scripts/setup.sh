#!/usr/bin/env bash
# Creates .venv with the project, its test tools and the tpu and eval extras, at exactly the
# versions uv.lock pins (`uv sync --frozen`: the lock is never re-resolved here). uv is the one
# on PATH, else it is pip-installed into .venv first (from PyPI, like everything else).
# Idempotent: returns at once unless pyproject.toml or uv.lock changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9  # the uv that wrote uv.lock (pyproject.toml's tool.uv.required-version)
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "palm-platform needs Python >= 3.11")'
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml uv.lock | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if command -v uv >/dev/null 2>&1; then
  uv=uv
else
  # -qq: the machine's own pip configuration may warn about its extra indexes
  [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -qq "uv==$UV_VERSION"
  uv=.venv/bin/uv
fi
# --inexact keeps what uv.lock does not list but the venv needs (pip, and uv itself);
# only PyPI is reachable on CI, so uv must use this Python, never download one.
# --compile-bytecode, as pip does: without .pyc files the first `palm cluster up` imports Ray
# from source in every node process at once, and on a loaded machine the head's dashboard
# then started too late for Ray's start-up timeout.
UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never \
  "$uv" sync --frozen --inexact --compile-bytecode --quiet --python .venv/bin/python \
  --extra test --extra tpu --extra eval
echo "$want" > "$stamp"
