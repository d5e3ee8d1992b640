"""The one door to Orbax's internals (orbax-checkpoint 0.12): every private name the platform
touches.

- the array-metadata store of Orbax's default jax.Array handler (private module
  `orbax.checkpoint._src.metadata.array_metadata_store`): checkpoint/items.py builds its own
  ArrayHandler (a replica-parallel floor) and checkpoints must keep that metadata format;
- the experimental absl flag `experimental_orbax_use_distributed_barrier`, which moves the
  barriers of a save's synchronous part onto JAX's coordination service
  (checkpoint/checkpointer.py).

Importing this module checks the installed orbax-checkpoint against WRITTEN_FOR
(compat/__init__.py).
"""

from __future__ import annotations

from palm_platform.compat import check_written_for

WRITTEN_FOR = "0.12.8"  # uv.lock's pin of orbax-checkpoint
check_written_for("orbax", "orbax-checkpoint", WRITTEN_FOR)  # before anything private below

DISTRIBUTED_BARRIER_FLAG = "experimental_orbax_use_distributed_barrier"


def array_metadata_store():
    """A new instance of the store Orbax's default ArrayHandler keeps per-array metadata in."""
    from orbax.checkpoint._src.metadata.array_metadata_store import Store

    return Store()


def barriers_through_the_distributed_client() -> bool:
    """Turn on Orbax's barriers over JAX's distributed client; False if Orbax lacks the flag.

    Why: by default Orbax's barriers in the synchronous part of a save are
    `sync_global_devices`, a collective over every device. Started on a thread, they run
    beside the train step's collectives on the same (gloo, on CPU) communicator, in a
    different order on each host, and the hosts deadlock (measured: a 2-process save on a
    thread hung). With Orbax 0.12's absl flag `experimental_orbax_use_distributed_barrier`
    the barriers are the coordination service's `wait_at_barrier` (gRPC, with timeouts,
    what Orbax's own background commit already uses), and 10 saves on a thread beside 40
    steps went through. Absl refuses to read any flag before its flags are parsed, so they
    are marked parsed (their defaults: nothing else changes) unless the program parsed them.
    """
    from absl import flags

    if DISTRIBUTED_BARRIER_FLAG not in flags.FLAGS:
        return False
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    setattr(flags.FLAGS, DISTRIBUTED_BARRIER_FLAG, True)
    return True


def __getattr__(name: str):
    """`atomicity`: Orbax's temporary paths, whose `finalize` commits a save (private module
    orbax.checkpoint._src.path.atomicity). Only tests use it: they patch `finalize` to stop a
    save before its commit. Loaded on first use, like everything behind this door."""
    if name == "atomicity":
        from orbax.checkpoint._src.path import atomicity

        return atomicity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
