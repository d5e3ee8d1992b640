"""platform/ray/auth.py: token mode follows the environment the way `ray start` does, and the
token only ever comes from the environment or the user's own file."""

import pytest

from palm_platform.ray import auth


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in (auth.MODE_VAR, auth.TOKEN_VAR, auth.TOKEN_PATH_VAR):
        # setenv first so that monkeypatch records the variable and restores it after the
        # test: enable_from_environment() sets RAY_AUTH_MODE in os.environ itself, and a
        # leaked RAY_AUTH_MODE=token would make every later `ray start` of the session demand
        # a token (a plain delenv of an unset variable records nothing to undo).
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token of the machine's user


def test_no_token_no_token_mode_and_no_header():
    assert not auth.enable_from_environment()
    assert auth.headers() == {}
    assert auth.MODE_VAR not in __import__("os").environ


def test_a_token_in_the_environment_turns_token_mode_on(monkeypatch):
    monkeypatch.setenv(auth.TOKEN_VAR, "abc123\n")
    assert auth.enable_from_environment()
    assert auth.headers() == {"Authorization": "Bearer abc123"}


def test_the_token_file_is_read_in_rays_order(monkeypatch, tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home")
    assert auth.headers() == {"Authorization": "Bearer from-home"}
    (tmp_path / "mine").write_text("from-path")
    monkeypatch.setenv(auth.TOKEN_PATH_VAR, str(tmp_path / "mine"))
    assert auth.headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv(auth.TOKEN_VAR, "from-env")
    assert auth.headers() == {"Authorization": "Bearer from-env"}


def test_an_explicit_disabled_mode_is_respected(monkeypatch):
    monkeypatch.setenv(auth.TOKEN_VAR, "abc")
    monkeypatch.setenv(auth.MODE_VAR, "disabled")
    assert not auth.enable_from_environment() and auth.headers() == {}


def test_the_status_line_says_what_is_open_and_the_fix():
    assert auth.describe("token").startswith("auth: token")
    off = auth.describe("disabled")
    assert "every interface" in off and "RAY_AUTH_MODE=token" in off and "\n" not in off
    assert "unknown" in auth.describe("unknown")
