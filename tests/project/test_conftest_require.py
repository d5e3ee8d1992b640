"""A skip that hides a real path fails in CI: tests/conftest.py's `require`."""

import subprocess
import sys
import textwrap

from tests.support.paths import ROOT


def _run(tmp_path, ci: bool):
    test = tmp_path / "test_needs_missing.py"
    test.write_text(textwrap.dedent("""
        from conftest import require

        def test_needs_a_missing_module():
            require("palm_no_such_module", "needs an extra")
    """))
    (tmp_path / "conftest.py").write_text(
        (ROOT / "tests" / "conftest.py").read_text())
    env = {"PATH": "/usr/bin:/bin", **({"CI": "true"} if ci else {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           str(test)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_missing_extra_skips_locally(tmp_path):
    out = _run(tmp_path, ci=False)
    assert out.returncode == 0 and "1 skipped" in out.stdout
    assert "needs an extra: `palm_no_such_module` is not installed" in out.stdout


def test_a_missing_extra_fails_in_ci(tmp_path):
    out = _run(tmp_path, ci=True)
    assert out.returncode == 1 and "1 failed" in out.stdout
    assert "CI must install it" in out.stdout
