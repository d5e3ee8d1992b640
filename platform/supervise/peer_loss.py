"""Recognise "a peer host died" among the errors a worker's collectives raise.

When one host of a multi-host job is killed, the survivors' next collective fails on gloo (CPU)
with a JaxRuntimeError such as "Gloo AllGather failed: ... Connection closed by peer". That is
an expected fault: Ray Train restarts the whole group anyway, so the survivor should say so in
one line and exit, not print a traceback. Anything else (a real bug) must still raise.
"""

from __future__ import annotations

import re

# Phrases gloo's TCP transport uses when the other end went away (gloo/transport/tcp/pair.cc).
_PEER_GONE = re.compile(r"closed by peer|reset by peer|Connection refused|Broken pipe|"
                        r"Socket closed|Read error|Write error", re.IGNORECASE)


def peer_loss_reason(exc: BaseException) -> str | None:
    """A short reason ("gloo: Connection closed by peer") when `exc` (or its cause) is a lost peer.

    Only JAX runtime errors whose message names gloo and a vanished peer count: the same words
    in any other exception, or a gloo error of another kind, are not a peer loss.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_jax_runtime_error(current):
            text = str(current)
            match = _PEER_GONE.search(text)
            if "gloo" in text.lower() and match:
                return f"gloo: {match.group(0)}"
        current = current.__cause__ or current.__context__
    return None


def _is_jax_runtime_error(exc: BaseException) -> bool:
    try:
        from jax.errors import JaxRuntimeError
    except ImportError:  # older jax: the same class under its XLA name
        from jaxlib.xla_extension import XlaRuntimeError as JaxRuntimeError
    return isinstance(exc, JaxRuntimeError)
