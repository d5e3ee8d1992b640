"""Who may use the local cluster's ports: Ray 2.60's token authentication, from the environment.

Ray 2.60's GCS, raylet, object manager and agent servers listen on every interface, and the
local cluster cannot bind them to loopback (listening.py): `ray start` replaces a loopback
node address with the machine's, and the servers bind loopback only for a loopback node
address. Upstream work on binding: ray-project/ray#55484, #55732 (bind the node IP),
#59852 (no 0.0.0.0 binds; merged in 2026-01), #65867 (closed).

What keeps other machines from running code here is Ray 2.60's token authentication: with
`RAY_AUTH_MODE=token`, every Ray gRPC server (GCS, raylet, object manager, workers, agents,
Ray Client) and the dashboard's HTTP API refuse a caller without the cluster's token. The
nodes of `palm cluster up` inherit the environment, so a token exported in the shell turns
it on for the cluster and for every client started from that shell (`palm run`,
`ray job submit`). The token is a secret: palm reads it from where Ray reads it (the
environment, or the file the user keeps at RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and
never writes it anywhere.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
OFF_FIX = (f"export {MODE_VAR}=token {TOKEN_VAR}=$(openssl rand -hex 32) in this shell, then "
           "`palm cluster down && palm cluster up`")


def _token() -> str | None:
    """The token, looked up in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
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


def enable_from_environment() -> bool:
    """Turn token mode on for this process and the nodes it starts when a token is at hand
    and RAY_AUTH_MODE is unset: the rule `ray start` applies to itself, so that palm's own
    requests to the dashboard carry the token the cluster will demand. Returns whether
    token mode is on."""
    mode = os.environ.get(MODE_VAR)
    if mode is None and _token() is not None:
        os.environ[MODE_VAR] = mode = "token"
    return (mode or "").lower() == "token"


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
        return "auth: token (RAY_AUTH_MODE=token): callers without the cluster's token are refused"
    if mode == "unknown":
        return "auth: unknown (the dashboard does not answer)"
    return ("auth: " + mode + ": Ray's GCS and raylet ports listen on every interface and "
            "anyone who reaches them can run code here. Fix: " + OFF_FIX)
