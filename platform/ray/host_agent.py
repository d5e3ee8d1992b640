"""Warm hosts: the Ray Train worker is a per-host agent that runs each generation of the JAX
process as a child, so a crash on a live host restarts the JAX processes, not the hosts.

JAX cannot re-initialise `jax.distributed` in a live process after a peer failure (on TPU and
the CPU/gloo path every process of the job must restart), but nothing forces a new Ray actor,
new imports and cold caches for that. A worker group (Ray Train v2, one actor per host) runs
`HostAgent.run` in each actor:

    generation 0   the coordinator Ray's JaxConfig chose (its arguments are recorded, not used,
                   in the agent: jax_backend.defer_jax_initialize)
    a child fails  its agent marks the generation failed in the GCS key-value store; every
                   agent kills its own child (a survivor may wait in a collective), host 0's
                   agent publishes a fresh coordinator port for the next generation, and each
                   agent forks a new child with the same process id (Orbax's emergency
                   checkpointing needs ids stable across restarts)
    a host is lost its actor is gone: Ray Train restarts the group as before (faults.py's
                   kill_host kills the agent; the child dies with it: PR_SET_PDEATHSIG)

Fork, not spawn or a forkserver: the agent has imported JAX, Flax, Optax, Orbax, Grain and the
platform (2-3 s per start here) but never opened a JAX backend (no XLA client, no gloo
context, no TPU: a TPU can be opened by one process at a time, so the agent must never open
one), and a fork copies those modules for free. What a fork cannot share is a live
connection: Ray's gRPC state belongs to the agent (a new GcsClient in a forked child hung
here), so the child never calls Ray and its agent serves the GCS key-value store for it over
a pipe (`_serve_kv`: the Ctrl-C stop key, the liveness board); JAX's own gRPC (the
coordination service), gloo, Orbax and TensorStore were never opened in the agent and open
fresh in the child. The agent
joins its preimport thread first (a fork while a thread holds the import lock deadlocks the
child). A forkserver would start clean, but its process is not the actor's: it would not
inherit the environment Ray Train sets per worker group (MEGASCALE_*, TPU_*), and its
imports would be paid again in a second process. MEGASCALE_* reach every generation through
the agent's environment (Ray's JaxConfig sets them in the agent before the recorded
initialize); on TPU the megascale coordinator port is the same for every generation.

Never loops: a generation that does not get past the step its predecessor failed at (a
crash loop, or a restart that cannot start), or more than `max_restarts` warm restarts,
makes the agent raise: one line, then Ray Train's group restart (counted in max_failures).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing import Value

from palm_platform.hook_protocol import Preempted
from palm_platform.ray.interrupt import KV_NAMESPACE

logger = logging.getLogger("palm")

POLL_S = 0.1
# How long host 0's agent waits for every agent to be ready for the next generation. A live
# agent is ready within a second of the failure (it kills its own process and waits for it);
# one that is not is on a lost or frozen host (a frozen one keeps its Ray actor, so Ray Train
# would not notice it): the group restart then takes over, without waiting for
# `faults.init_timeout_s`.
READY_TIMEOUT_S = 15.0
PREEMPTED_EXIT = 76  # a JAX process that saved a preemption's agreed step (worker.py)


class WarmRestartFailed(RuntimeError):
    """Raised by an agent: Ray Train restarts the worker group instead."""


def _serve_kv(connection) -> None:
    """In the agent: the GCS key-value calls of its JAX process, until the process ends."""
    from palm_platform.compat import ray as ray_compat

    calls = {"get": lambda k, v, n: ray_compat.kv_get(k, n),
             "put": lambda k, v, n: ray_compat.kv_put(k, v, n),
             "delete": lambda k, v, n: ray_compat.kv_delete(k, n)}
    while True:
        try:
            op, key, value, namespace = connection.recv()
        except (EOFError, OSError):
            return
        try:
            result = (True, calls[op](key, value, namespace))
        except Exception as error:  # noqa: BLE001 - raised in the child, where it was called
            result = (False, repr(error))
        try:
            connection.send(result)
        except OSError:
            return


def _kv_client(connection):
    """In the JAX process: one call at a time over the agent's pipe (several threads use it)."""
    import threading

    lock = threading.Lock()

    def call(op: str, key: str, value, namespace: str):
        with lock:
            connection.send((op, key, value, namespace))
            ok, result = connection.recv()
        if not ok:
            raise RuntimeError(f"the host agent's GCS key-value store: {result}")
        return result

    return call


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the agent's thread that forked it ends (a lost
    host, Ray Train killing the group's actors)."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return {75: "exited 75 (hang or lost peer)"}.get(code, f"exited {code}")


class HostAgent:
    """One host's agent: `run(body)` runs `body` in a JAX process per generation.

    `coordinator`: generation 0's coordinator address (Ray's); `key`: this worker group's
    prefix in the GCS key-value store (unique per group start); `index`/`count`: this host's
    JAX process id and the process count."""

    def __init__(self, *, coordinator: str, index: int, count: int, key: str,
                 max_restarts: int, join_timeout_s: float):
        self.coordinator, self.index, self.count, self.key = coordinator, index, count, key
        self.max_restarts = max_restarts
        self.join_timeout_s = join_timeout_s
        self.host = f"host {index}/{count}"

    # -- the key-value store ------------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        from palm_platform.compat.ray import kv_get

        return kv_get(f"{self.key}/{key}", KV_NAMESPACE)

    def _put(self, key: str, value: str) -> None:
        from palm_platform.compat.ray import kv_put

        kv_put(f"{self.key}/{key}", value.encode(), KV_NAMESPACE)

    # -- generations --------------------------------------------------------------------

    def run(self, body: Callable[[Callable[[int], None]], None]) -> None:
        """`body(on_step)` trains; `on_step(step)` after each finished step tells the agent
        how far this generation got. Returns when a generation ends normally (done, stopped,
        an elastic job preempted); raises WarmRestartFailed to hand over to Ray Train, and
        Preempted when every host saved a preemption's step (Ray Train restarts the group)."""
        generation, address, failed_at = 0, self.coordinator, None
        while True:
            reached = Value("q", -1, lock=False)  # shared with the child: its newest step
            status = self._run_child(body, generation, address, reached)
            if status is None:
                return
            if os.waitstatus_to_exitcode(status) == PREEMPTED_EXIT:  # not a failure
                raise Preempted(reached.value)
            why = f"JAX process {_describe(status)}"
            progressed = failed_at is None or reached.value > failed_at
            if generation >= self.max_restarts or not progressed:
                cause = (f"{self.max_restarts} warm restarts used" if progressed else
                         f"the warm restart did not get past step {failed_at}")
                logger.error("%s: %s in generation %d (%s); falling back to a worker-group "
                             "restart", self.host, why, generation, cause)
                raise WarmRestartFailed(f"{self.host}: {why} ({cause})")
            failed_at = max(reached.value, failed_at if failed_at is not None else -1)
            generation += 1
            logger.info("%s: %s; ready to restart the JAX processes warm (generation %d, "
                        "agent pid %d)", self.host, why, generation, os.getpid())
            address = self._agree(generation)

    def _agree(self, generation: int) -> str:
        """The coordinator of `generation`, once every host's agent is ready for it: host 0's
        agent waits for all of them, picks a free port on its own address (its child runs the
        coordinator) and says so in the run's one line about this restart; the others wait
        for the port. A lost host's agent never gets ready: Ray Train's group restart ends
        the wait (nothing claims a warm restart that does not happen)."""
        self._put(f"{generation}/ready/{self.index}", "1")
        if self.index == 0:
            self._wait_for_every_agent(generation)
            host = self.coordinator.rsplit(":", 1)[0]
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
            address = f"{host}:{port}"
            self._put(f"{generation}/coordinator", address)
            failed = self._get(f"{generation - 1}/failed")
            logger.warning("%s; every host is up: restarting the JAX processes warm "
                           "(generation %d)", failed.decode() if failed else "a JAX process "
                           "failed", generation)
            return address
        deadline = time.monotonic() + self.join_timeout_s
        while time.monotonic() < deadline:
            value = self._get(f"{generation}/coordinator")
            if value:
                return value.decode()
            time.sleep(POLL_S)
        raise WarmRestartFailed(f"{self.host}: host 0's agent named no coordinator for "
                                f"generation {generation} within {self.join_timeout_s:.0f} s")

    def _wait_for_every_agent(self, generation: int) -> None:
        """Host 0's agent: until every agent said it is ready for `generation`; after
        READY_TIMEOUT_S, one line and WarmRestartFailed (Ray Train restarts the group)."""
        waiting = set(range(self.count))
        wait_s = min(READY_TIMEOUT_S, self.join_timeout_s)
        ready_by = time.monotonic() + wait_s
        while waiting and time.monotonic() < ready_by:
            waiting = {i for i in waiting if not self._get(f"{generation}/ready/{i}")}
            if waiting:
                time.sleep(POLL_S)
        if waiting:
            logger.error("%s: the agents of host(s) %s are not ready for a warm restart after "
                         "%.0f s (lost or frozen); falling back to a worker-group restart",
                         self.host, sorted(waiting), wait_s)
            raise WarmRestartFailed(
                f"{self.host}: the agents of host(s) {sorted(waiting)} were not ready for "
                f"generation {generation} within {wait_s:.0f} s")

    def _run_child(self, body, generation: int, address: str, reached) -> int | None:
        """Fork this generation's JAX process, wait for it; None when it ended normally,
        else its wait status. Kills it when another host's process failed."""
        from palm_platform.ray import jax_backend

        for thread in jax_backend.PREIMPORT:
            thread.join()
        for handler in logging.getLogger("palm").handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        import threading
        from multiprocessing import Pipe

        ours, theirs = Pipe()
        pid = os.fork()
        if pid == 0:  # the JAX process: never returns into the agent's (Ray's) code
            ours.close()
            self._child(body, generation, address, reached, theirs)
        theirs.close()
        threading.Thread(target=_serve_kv, args=(ours,), name="palm-kv-for-child",
                         daemon=True).start()
        jax_backend.JAX_CHILD.append(pid)
        try:
            failed = f"{generation}/failed"
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if self._get(failed):  # a peer's process failed: this one cannot go on
                    os.kill(pid, signal.SIGKILL)
                    _, status = os.waitpid(pid, 0)
                    return status
                time.sleep(POLL_S)
        finally:
            jax_backend.JAX_CHILD.clear()
            ours.close()
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return None
        # The first failure is the cause (the others' processes then lose a peer); a
        # preemption's exit is no failure: every host exits so.
        if code != PREEMPTED_EXIT and not self._get(failed):
            self._put(failed, f"{self.host}: JAX process {_describe(status)}")
        return status

    def _child(self, body, generation: int, address: str, reached, kv) -> None:
        code = 1
        try:
            _die_with_parent()
            from palm_platform.compat.ray import kv_through, set_process_title
            from palm_platform.ray import jax_backend
            from palm_platform.supervise.faults import HOST_AGENT_PID_ENV

            set_process_title(f"palm::jax-process {self.host} generation {generation}")
            os.environ[HOST_AGENT_PID_ENV] = str(os.getppid())
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # JAX's notifier takes it over
            kv_through(_kv_client(kv))
            jax_backend.WORKER_MARKS.clear()  # this process's own start-up marks
            jax_backend.initialize_deferred(address)

            def on_step(step: int) -> None:
                reached.value = step

            body(on_step)
            code = 0
        except Preempted as preempted:  # every host saved it: the agent raises it on
            reached.value = preempted.step
            code = PREEMPTED_EXIT
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:  # noqa: BLE001 - printed; the agent decides what follows
            import traceback

            traceback.print_exc()
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
