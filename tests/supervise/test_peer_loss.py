"""Which errors count as "a peer host died" (the worker then exits in one line, no traceback)."""

from jax.errors import JaxRuntimeError

from palm_platform.supervise.peer_loss import peer_loss_reason

# As a survivor printed it after its peer was SIGKILLed on the local cluster.
CLOSED = ("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
          "Connection closed by peer [127.0.0.1]:26011")


def test_gloo_connection_closed_by_peer_is_a_peer_loss():
    assert peer_loss_reason(JaxRuntimeError(CLOSED)) == "gloo: closed by peer"


def test_a_peer_loss_raised_as_the_cause_of_another_error_is_found():
    try:
        try:
            raise JaxRuntimeError("UNKNOWN: Gloo AllReduce failed: Connection reset by peer")
        except JaxRuntimeError as gloo:
            raise RuntimeError("checkpoint save failed") from gloo
    except RuntimeError as outer:
        assert peer_loss_reason(outer) == "gloo: reset by peer"


def test_other_errors_are_not_peer_losses():
    # The same words outside a JAX runtime error, a gloo error of another kind, a real bug.
    assert peer_loss_reason(RuntimeError(CLOSED)) is None
    assert peer_loss_reason(JaxRuntimeError("UNKNOWN: Gloo AllGather failed: invalid size")) is None
    assert (
        peer_loss_reason(JaxRuntimeError("RESOURCE_EXHAUSTED: Connection closed by peer")) is None
    )
    assert peer_loss_reason(ValueError("shapes (4,) and (8,) differ")) is None
