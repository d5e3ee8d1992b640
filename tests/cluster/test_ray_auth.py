"""platform/cluster/auth.py: token mode follows the environment the way `ray start` does, and the
token only ever comes from the environment or the user's own file."""

import pytest

from palm_platform.cluster import auth


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
    on = auth.describe("token")
    assert on.startswith("auth: token") and "ray get-auth-token" in on  # how a browser gets in
    off = auth.describe("disabled")
    assert "every interface" in off and "--no-auth" in off and "\n" not in off
    assert "unknown" in auth.describe("unknown")


def test_cluster_up_makes_a_token_in_rays_default_file_mode_0600(tmp_path):
    import os

    mode, note = auth.prepare_cluster_auth()
    token_file = tmp_path / ".ray" / "auth_token"
    token = token_file.read_text()
    assert mode == "token" and os.environ[auth.MODE_VAR] == "token"
    assert len(token) == 64 and int(token, 16) >= 0  # what `ray get-auth-token --generate` makes
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / ".ray").stat().st_mode & 0o077 == 0
    assert str(token_file) in note and token not in note  # names the file, never the token
    assert auth.headers() == {"Authorization": f"Bearer {token}"}
    assert auth.prepare_cluster_auth() == ("token", None)  # the second time: the same token
    assert token_file.read_text() == token


def test_the_token_goes_to_RAY_AUTH_TOKEN_PATH_when_set(monkeypatch, tmp_path):
    mine = tmp_path / "secrets" / "ray-token"
    monkeypatch.setenv(auth.TOKEN_PATH_VAR, str(mine))
    assert auth.prepare_cluster_auth()[0] == "token"
    assert mine.stat().st_mode & 0o777 == 0o600 and not (tmp_path / ".ray").exists()


def test_a_token_file_others_can_read_is_tightened_to_0600(tmp_path):
    (tmp_path / ".ray").mkdir()
    token_file = tmp_path / ".ray" / "auth_token"
    token_file.write_text("from-ray-with-the-default-umask")
    token_file.chmod(0o644)  # how Ray's own `ray get-auth-token --generate` leaves it
    mode, note = auth.prepare_cluster_auth()
    assert mode == "token" and "0600" in note and "from-ray" not in note
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text() == "from-ray-with-the-default-umask"


def test_a_token_in_the_environment_is_used_and_no_file_is_made(monkeypatch, tmp_path):
    monkeypatch.setenv(auth.TOKEN_VAR, "from-env")
    assert auth.prepare_cluster_auth() == ("token", None)
    assert not (tmp_path / ".ray").exists()


def test_no_auth_or_an_exported_disabled_mode_opts_out_and_makes_no_token(monkeypatch, tmp_path):
    import os

    assert auth.prepare_cluster_auth(no_auth=True) == ("disabled", None)
    assert os.environ[auth.MODE_VAR] == "disabled" and auth.headers() == {}
    monkeypatch.delenv(auth.MODE_VAR)
    monkeypatch.setenv(auth.MODE_VAR, "disabled")
    assert auth.prepare_cluster_auth() == ("disabled", None)
    assert not (tmp_path / ".ray").exists()
    assert auth.node_env("disabled") == {auth.MODE_VAR: "disabled"}


def test_an_unwritable_token_folder_is_one_line_with_the_fix(monkeypatch, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv(auth.TOKEN_PATH_VAR, str(blocked / "auth_token"))
    with pytest.raises(auth.AuthSetupError) as error:
        auth.prepare_cluster_auth()
    assert "\n" not in str(error.value) and "--no-auth" in str(error.value)
