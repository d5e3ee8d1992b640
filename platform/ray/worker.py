"""What each Ray Train worker (one per TPU host) runs: the train loop, supervised.

jax.distributed is initialised by the worker group (ray/jax_backend.py, BoundedJaxConfig), or,
with warm hosts, by each JAX process the worker's host agent starts (ray/host_agent.py).
The supervision hook (supervise/heartbeat.py) beats a watchdog (supervise/watchdog.py), which
turns "no step for hang_timeout_s" into a process exit: the host agents restart the JAX
processes (warm hosts), or Ray Train sees a worker failure and restarts the whole group; either
way the loop resumes from the newest good checkpoint. A preemption notice ends every host at
one saved step, and the group restarts in place (`_leave_preempted`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from palm_platform.atomic_write import write_atomic
from palm_platform.run_dir import RunDir
from palm_platform.supervise.watchdog import Watchdog

logger = logging.getLogger("palm")


def configure_logging() -> None:
    """One line per event on stderr for our loggers; libraries only warn. Idempotent.

    The level is in the line: a Ray driver prints a worker's warnings and errors and keeps the
    rest in the run's log file (ray/worker_output.py)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(_not_printed_by_the_driver)
    for name in ("palm", "palm_platform"):
        ours = logging.getLogger(name)
        ours.handlers = [handler]
        ours.propagate = False
        ours.setLevel(logging.INFO)
    for noisy in ("absl", "orbax", "jax", "tensorstore", "etils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def _not_printed_by_the_driver(record: logging.LogRecord) -> bool:
    """False for an event line `palm run`'s live view also prints (status.Progress), so the
    terminal shows each event once: the driver's sentence. Events the live view only puts on its
    bar (a checkpoint saved, with how long the loop waited) keep the worker's line."""
    from palm_platform.metrics.status import ON_THE_BAR

    kind = getattr(record, "event_kind", None)
    return kind is None or kind in ON_THE_BAR


def train_worker(raw_config: dict) -> None:
    """Ray Train entry: `raw_config` is a WorkerConfig as JSON (worker_config.py).

    With warm hosts (faults.warm_hosts, more than one host) this actor is the host's agent
    (host_agent.py): it imports what the trainer needs, then runs each generation of the JAX
    process as a child; otherwise it is the JAX process itself."""
    entered = time.time()
    configure_logging()
    import jax  # noqa: F401 - imported once here, for every generation a host agent forks
    import psutil

    from palm_platform.ray.jax_backend import DEFERRED_INITIALIZE, WORKER_MARKS
    from palm_platform.ray.worker_config import WorkerConfig
    from palm_platform.train.loop import Trainer  # noqa: F401 - see `import jax`

    # Where a (re)start spends its seconds: the Trainer reports the spans between these
    # (WORKER_MARKS: inside Ray Train's set-up, before this function ran).
    marks = {"process_started": psutil.Process().create_time(), **WORKER_MARKS,
             "train_fn_entered": entered, "imported": time.time()}
    config = WorkerConfig.model_validate(raw_config)
    if not DEFERRED_INITIALIZE:  # jax.distributed is up (or one host): this is the process
        _train(config, marks)
        return
    from palm_platform.job import Job
    from palm_platform.ray.host_agent import HostAgent

    faults = Job.model_validate(config.job).faults
    agent = HostAgent(
        coordinator=str(DEFERRED_INITIALIZE["coordinator_address"]),
        index=int(DEFERRED_INITIALIZE["process_id"]),
        count=int(DEFERRED_INITIALIZE["num_processes"]),
        key=f"warm/{config.stop_key}/{DEFERRED_INITIALIZE['coordinator_address']}",
        max_restarts=faults.max_restarts, join_timeout_s=faults.init_timeout_s)

    def generation(on_step) -> None:
        now = time.time()
        _train(config, {"process_started": psutil.Process().create_time(), **WORKER_MARKS,
                        "train_fn_entered": now, "imported": now}, on_step=on_step)

    agent.run(generation)


def _report_step(report):
    """A hook that tells the host agent each finished step (how far a generation got)."""
    from palm_platform.hook_protocol import Hook

    class ReportStep(Hook):
        def on_step(self, info) -> None:
            report(info.step)

    return ReportStep()


def _train(config, marks: dict[str, float], on_step=None) -> None:
    """One JAX process's run: restore, train, save; jax.distributed is initialised."""
    import jax

    from palm_platform.hook_protocol import Preempted, StopTraining
    from palm_platform.job import Job
    from palm_platform.train.loop import Trainer

    job, run_dir = Job.model_validate(config.job), Path(config.run_dir)
    from palm_platform.data import read_failure

    if read_failure.recorded(run_dir, config.launched_at):  # a damaged store: never retried
        return
    host = f"host {jax.process_index()}/{jax.process_count()}"
    attempt = _agreed_attempt(run_dir, config.launched_at)
    supervision = _supervision_hook(job, config.stop_key, host)
    hooks = (supervision,) if on_step is None else (supervision, _report_step(on_step))
    try:
        trainer = Trainer(job, run_dir, attempt=attempt, hooks=hooks,
                          launched_at=config.launched_at, startup_marks=marks)
    except Exception as error:  # noqa: BLE001 - re-raised; a damaged store is recorded first
        read_failure.record(run_dir, config.launched_at, error)
        raise
    if attempt == 0:  # once per launch, not again after every restart
        from palm_platform.data.quality import report_data_quality

        report_data_quality(trainer.setup)
    preempted: Preempted | None = None
    try:
        summary = trainer.run()
    except StopTraining as stopped:  # Ctrl-C on `palm run`: finish, not fail (no restart)
        logger.info("%s: stopped at step %d as asked (interrupt)", host, stopped.step)
        trainer.stopped(stopped.step)
        return
    except Preempted as notice:  # saved at the agreed step
        logger.info("%s: preempted, step %d saved", host, notice.step)
        trainer.stopped(notice.step)  # the goodput file and ledger, as on Ctrl-C
        preempted = notice
    except Exception as error:  # noqa: BLE001 - re-raised unless it is a lost peer
        _exit_if_peer_lost(error, host, supervision.watchdog.last_step)
        read_failure.record(run_dir, config.launched_at, error)  # the restart finishes at once
        raise
    finally:
        trainer.close()  # stops the watchdog; waits for an in-flight checkpoint
    if preempted is not None:
        _leave_preempted(preempted, elastic=job.topology.elastic, attempt=attempt)
        return
    if jax.process_index() == 0:
        write_atomic(RunDir(run_dir).summary,
                     json.dumps(summary.__dict__, default=float, indent=1))


def _leave_preempted(preempted, *, elastic: bool, attempt: int) -> None:
    """After a preemption's agreed step is saved and the Trainer closed: raise `preempted`
    into Ray Train, which restarts the group in place without spending `max_restarts`
    (compat/ray.py's failure policy; the restart skips a second controller and `palm run`'s
    relaunch). An elastic job returns instead: `palm run` launches it again at the size the
    cluster has then (a grow-back, a drained pod: ray/resize.py).

    The raise waits at a barrier of every process first: Ray Train tears the group down at the
    first error it sees, and a host still closing (process 0 commits the save, writes the
    goodput file) must not be killed mid-way."""
    if elastic:
        return
    import jax

    if jax.process_count() > 1:
        from palm_platform.compat.jax import coordination_client

        coordination_client().wait_at_barrier(f"palm-preempted-{attempt}-{preempted.step}",
                                              PREEMPTED_BARRIER_MS)
    raise preempted


# Every host reaches the preemption barrier within a close() of the others (a save's wait).
PREEMPTED_BARRIER_MS = 120_000


def _supervision_hook(job, stop_key: str | None, host: str):
    """The watchdog (no step for faults.hang_timeout_s: exit, so Ray Train restarts the
    group), the liveness board that names a stuck peer, and the Ctrl-C stop check."""
    import jax

    from palm_platform.ray.interrupt import StopListener
    from palm_platform.supervise.heartbeat import SupervisionHook

    index, count = jax.process_index(), jax.process_count()
    stop = StopListener(stop_key, index) if stop_key else None
    board = None
    if stop_key and count > 1:  # name a stuck peer (liveness.py)
        from palm_platform.ray.liveness import LivenessBoard

        board = LivenessBoard(f"alive/{stop_key}", index, count).start()

    def on_hang(idle_s: float) -> None:
        _exit_on_hang(host, idle_s, watchdog, board, job.faults.hang_timeout_s)

    # Started by the hook after the first step, so compilation does not count as a hang.
    watchdog = Watchdog(job.faults.hang_timeout_s, on_hang)
    return SupervisionHook(watchdog, board, stop)


def _exit_on_hang(host: str, idle_s: float, watchdog: Watchdog, board, limit_s: float) -> None:
    """The watchdog fired: name the stuck hosts if the board knows them, dump every thread's
    stack (where this host waits), exit so the JAX processes restart (warm, or the group)."""
    import faulthandler
    import sys

    try:
        stuck = board.stuck_hosts() if board is not None else []
    except Exception:  # noqa: BLE001 - the report must not stop the exit
        stuck = []
    culprit = ("stuck: " + "; ".join(stuck)) if stuck else (
        "every host still alive: a stuck collective or step")
    logger.error("%s: no step for %.0f s after step %s (limit %.0f s); %s. Exiting so %s "
                 "from the newest checkpoint", host, idle_s, watchdog.last_step, limit_s,
                 culprit, _who_restarts())
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)  # where this host waits
    os._exit(75)


def _exit_if_peer_lost(error: BaseException, host: str, step: int | None) -> None:
    """A collective failed because another host died: one line, then exit as the watchdog does.

    The JAX processes restart either way (Ray Train's group restart when the dead host's actor
    is gone, or its host agent's warm restart); exiting here only spares the operator each
    survivor's traceback. The finally block's checkpoint wait is
    skipped on purpose: it would block on the same broken communicator.
    """
    from palm_platform.supervise.peer_loss import peer_loss_reason

    reason = peer_loss_reason(error)
    if reason is None:
        return
    # Under a host agent the terminal gets one line per restart (host 0's agent, or Ray
    # Train's when a host is gone): each survivor's own line stays in the run's log.
    level = logging.INFO if _under_host_agent() else logging.ERROR
    logger.log(level, "%s: lost a peer during step %s (%s); exiting so %s", host,
               "?" if step is None else step + 1, reason, _who_restarts())
    logging.shutdown()  # flush the line before the hard exit
    os._exit(75)


def _under_host_agent() -> bool:
    """Whether this JAX process is a host agent's child (faults.warm_hosts)."""
    from palm_platform.supervise.faults import HOST_AGENT_PID_ENV

    return HOST_AGENT_PID_ENV in os.environ


def _who_restarts() -> str:
    return ("the host agents restart the JAX processes (Ray Train the group if a host is gone)"
            if _under_host_agent() else "Ray Train restarts the worker group")


def _agreed_attempt(run_dir: Path, launch: float | None) -> int:
    """This start's attempt number on every host: process 0 counts the starts in its run
    folder (on a TPU pod only host 0 has it) and sends its count to the others."""
    import jax

    from palm_platform.multihost import broadcast_int

    return broadcast_int(_next_attempt(run_dir, launch) if jax.process_index() == 0 else 0)


def _next_attempt(run_dir: Path, launch: float | None = None) -> int:
    """0 for the first start of this launch's worker group, 1 after its first restart, ...

    Counted per launch of `palm run` (`launch` = its start time): re-running the command
    after an interrupt is a resume (attempt 0 with a checkpoint), not a restart.
    """
    path = RunDir(run_dir).attempts
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = None
    same_launch = isinstance(previous, dict) and previous.get("launch") == launch
    attempt = previous["attempt"] + 1 if same_launch else 0
    write_atomic(path, json.dumps({"launch": launch, "attempt": attempt}))  # read after kills
    return attempt
