"""Who may use the local cluster's ports: Ray 2.60's token authentication, from the environment.

Ray 2.60's GCS, raylet, object manager and agent servers listen on every interface, and the local
cluster cannot bind them to loopback (tests/support/listening.py): `ray start` replaces a loopback
node address with the machine's, and the servers bind loopback only for a loopback node address.
Upstream work on binding: ray-project/ray#55484, #55732 (bind the node IP), #59852 (no 0.0.0.0
binds; merged in 2026-01), #65867 (closed).

What keeps other machines from running code here is Ray 2.60's token authentication: with
`RAY_AUTH_MODE=token`, every Ray gRPC server (GCS, raylet, object manager, workers, agents,
Ray Client) and the dashboard's HTTP API refuse a caller without the cluster's token. The
nodes of `palm cluster up` inherit the environment, so a token exported in the shell turns
it on for the cluster and for every client started from that shell (`palm run`,
`ray job submit`). The token is a secret: palm reads it from where Ray reads it (the
environment, or the file at RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), never prints or
logs it, and never writes it into a run folder.

Token mode is the default for `palm cluster up` (`prepare_cluster_auth`): with no token at
hand it makes one, as `ray get-auth-token --generate` does, in the file Ray reads by default
(RAY_AUTH_TOKEN_PATH if set, else ~/.ray/auth_token), so that `palm run`, `palm status` and
`ray job submit` from any later shell of this user find it. Ray writes that file with the
default umask (readable by every local user); palm creates it 0600 and tightens a group- or
world-readable one it uses. `--no-auth`, or an explicit RAY_AUTH_MODE=disabled, opts out.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import urllib.request
from pathlib import Path

MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
OFF_FIX = (f"`palm cluster down && palm cluster up` without --no-auth, with {MODE_VAR} unset "
           f"or {MODE_VAR}=token (it makes a token, mode 0600, if none is at hand)")


class AuthSetupError(RuntimeError):
    """Token mode cannot be set up (an unusable token file); the message says the fix."""


def default_token_path() -> Path:
    """Where Ray reads the token file: RAY_AUTH_TOKEN_PATH if set, else ~/.ray/auth_token."""
    return Path(os.environ.get(TOKEN_PATH_VAR) or Path.home() / ".ray" / "auth_token").expanduser()


def _token() -> str | None:
    """The token, looked up in Ray's order.

    RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token.
    """
    if os.environ.get(TOKEN_VAR):
        return os.environ[TOKEN_VAR].strip()
    path = os.environ.get(TOKEN_PATH_VAR)
    for candidate in ([Path(path)] if path else []) + [Path.home() / ".ray" / "auth_token"]:
        try:
            text = candidate.expanduser().read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def token_at_hand() -> bool:
    """Whether a token is where Ray looks (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray)."""
    return _token() is not None


def _write_new_token(path: Path) -> None:
    """A fresh token in a new file created 0600 (never readable by others, not even briefly).

    The token is what Ray's `ray get-auth-token --generate` makes (256 random bits as 64 hex
    digits, ray/_private/authentication/authentication_token_generator.py); written here
    rather than through Ray's private `generate_and_save_token`, which ignores
    RAY_AUTH_TOKEN_PATH and creates the file with the default umask.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
        out.flush()
        os.fsync(out.fileno())


def _tighten(path: Path) -> bool:
    """Make a token file that others can read 0600 (Ray writes it with the default umask);
    returns whether it changed it. A file of another user is left alone."""
    info = path.stat()
    if info.st_mode & 0o077 and info.st_uid == os.getuid():
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
        return True
    return False


def prepare_cluster_auth(no_auth: bool = False) -> tuple[str, str | None]:
    """Decide the mode a new local cluster's nodes start in, before any of them starts.

    Returns (mode, note): mode "token" or "disabled", set in os.environ (RAY_AUTH_MODE) so
    that the nodes and this process's own Ray calls agree; note, a line for the user when
    palm made or tightened a token file (it names the file, never the token), else None.
    Token mode unless `no_auth` or RAY_AUTH_MODE=disabled is exported: with no token at
    hand, one is made at `default_token_path()`.
    """
    if no_auth or (os.environ.get(MODE_VAR) or "").lower() == "disabled":
        os.environ[MODE_VAR] = "disabled"
        return "disabled", None
    note = None
    if not os.environ.get(TOKEN_VAR):
        path = default_token_path()
        try:
            if not path.exists() or not path.read_text().strip():
                path.unlink(missing_ok=True)  # an empty file: Ray refuses it, so replace it
                _write_new_token(path)
                note = f"auth: made a token in {path} (mode 0600); Ray's clients read it there"
            elif _tighten(path):
                note = f"auth: {path} was readable by other users; now mode 0600"
        except OSError as error:
            raise AuthSetupError(
                f"cannot make or read the token file {path}: {error.strerror}. Fix: make its "
                f"folder writable, point {TOKEN_PATH_VAR} elsewhere, or `palm cluster up "
                "--no-auth`") from None
    os.environ[MODE_VAR] = "token"
    from palm_platform.compat.ray import reread_auth_mode

    reread_auth_mode()  # this process's Ray calls (the state API) now send the token
    return "token", note


def node_env(mode: str) -> dict[str, str]:
    """The auth variables every node of a cluster in `mode` starts with (add-pod included):
    the mode only; the token itself is read by each node from the file or the environment."""
    return {MODE_VAR: mode}


def enable_from_environment() -> bool:
    """Turn token mode on for this process and the nodes it starts when a token is at hand
    and RAY_AUTH_MODE is unset: the rule `ray start` applies to itself, so that palm's own
    requests to the dashboard carry the token the cluster will demand. Returns whether
    token mode is on."""
    mode = os.environ.get(MODE_VAR)
    if mode is None and _token() is not None:
        os.environ[MODE_VAR] = mode = "token"
    return (mode or "").lower() == "token"


# Ray 2.60's job CLI (`ray job submit`, dashboard_sdk.py) sends the token it finds only when
# RAY_AUTH_MODE=token is in its environment: unlike `ray start` and `ray.init`, it does not
# turn token mode on when a token file exists. Hence this prefix on the command palm prints.
SUBMIT_PREFIX = f"{MODE_VAR}=token "


def enable_for_client(recorded_mode: str | None = None) -> bool:
    """Before this process connects to a cluster by address (`palm run`'s ray.init): Ray
    2.60's ray.init turns token mode on from a token file only for a cluster it finds itself,
    never for an explicit address (worker.py), so a new shell's `palm run` would be refused.
    With RAY_AUTH_MODE unset, use the mode `palm cluster up` recorded for that cluster, else
    Ray's rule for `ray start` (token mode when a token is at hand). Returns whether token
    mode is on."""
    if os.environ.get(MODE_VAR) is None and recorded_mode in ("token", "disabled"):
        os.environ[MODE_VAR] = recorded_mode
    on = enable_from_environment()
    from palm_platform.compat.ray import reread_auth_mode

    reread_auth_mode()
    return on


def headers() -> dict[str, str]:
    """The dashboard HTTP header that proves the token (unless RAY_AUTH_MODE=disabled). Sent
    whenever a token is at hand: a cluster without token mode ignores it, and one with it
    refuses requests without it."""
    token = _token() if (os.environ.get(MODE_VAR) or "").lower() != "disabled" else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def cluster_mode(dashboard_url: str, timeout_s: float = 2.0) -> str:
    """The running cluster's mode ("token" or "disabled") from its dashboard (a public path)."""
    try:
        url = f"{dashboard_url}/api/authentication_mode"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(json.loads(response.read()).get("authentication_mode", "unknown"))
    except Exception:  # noqa: BLE001 - status must still print what it knows
        return "unknown"


def describe(mode: str) -> str:
    """One line for `palm cluster up|status`."""
    if mode == "token":
        return ("auth: token: callers without the cluster's token are refused (the browser asks "
                "for it once: paste the output of `ray get-auth-token`)")
    if mode == "unknown":
        return "auth: unknown (the dashboard does not answer)"
    return ("auth: " + mode + ": Ray's GCS and raylet ports listen on every interface and "
            "anyone who reaches them can run code here. Fix: " + OFF_FIX)
