"""Recovery: where a run starts from, and the rollback after a loss spike.

Two entry points, both called on every host in lock-step (they read and write checkpoints
through Orbax's collective API):

    restore_or_init(setup, supervision, attempt) -> state   the newest good checkpoint of
                                                            either tier, else a fresh (or
                                                            fine-tune) start
    roll_back(setup, supervision, spike, data_state, batch_size) -> state
                                                            restore an older checkpoint and
                                                            skip the spike's data

The supervision state (supervise/supervision.py: the ledger, the spike detector) is saved
with every checkpoint and the ledger also in the run folder, so every host applies the same
skips after a restart.
"""

from __future__ import annotations

import json
from typing import Any

import jax

from palm_platform.checkpoint.checkpoints import PERSISTENT, Due
from palm_platform.checkpoint.errors import CheckpointNotFound
from palm_platform.multihost import broadcast_text
from palm_platform.supervise.ledger import Ledger
from palm_platform.supervise.rollback import plan_rollback
from palm_platform.supervise.spike import Spike
from palm_platform.supervise.supervision import Supervision
from palm_platform.train.setup import TrainSetup
from palm_platform.train.step import cross_pod_bytes_per_step


class TrainingStopped(RuntimeError):
    """The fault policy stopped the run (e.g. spikes kept recurring); the ledger says why."""


def restore_or_init(setup: TrainSetup, supervision: Supervision, attempt: int) -> Any:
    """The newest good checkpoint, or a fresh start; returns the train state."""
    try:
        restored = setup.checkpoints.restore()  # the newest of either tier
    except CheckpointNotFound:
        return _fresh_start(setup, supervision, attempt)
    _load_supervision(supervision, restored.ledger, restored.step)
    _note_resize(setup, supervision, restored.ledger, restored.step)
    _resume_data(setup, supervision, restored.data_state)
    setup.sink.event("checkpoint_restored", restored.step, attempt=attempt,
                     **restored.record())
    if attempt == 0:  # a new launch of the same job (e.g. after Ctrl-C): a resume
        setup.sink.event("resume", restored.step)
    if attempt > 0:
        supervision.ledger.record_restart(restored.step, cause=f"worker group restart {attempt}")
        # The `restart` record follows at the first finished step, with every second of the
        # restart by cause (supervise/restart_account.py).
        supervision.rolled_back_s = setup.goodput.rollback(to_step=restored.step)
    return restored.train_state


def _fresh_start(setup: TrainSetup, supervision: Supervision, attempt: int) -> Any:
    from palm_platform.train.state import init_train_state

    job, program = setup.job, setup.program
    setup.sink.event("start", 0, attempt=attempt, hosts=jax.process_count(), pods=program.pods,
                     devices=program.mesh.size,
                     cross_pod_bytes_per_step=cross_pod_bytes_per_step(
                         program.abstract_state.params, program.pods, job.mesh.cross_pod_dtype))
    if job.init_from is None:
        state = init_train_state(program.model_cfg, program.tx, program.mesh, job.train.seed,
                                 program.shardings)
    else:  # fine-tuning: parameters from another run; a restart resumes from our own
        from palm_platform.train.init_from import load_initial_state

        state, source_step = load_initial_state(job, program.abstract_state, program.tx,
                                                program.shardings)
        setup.sink.event("init_from", 0, checkpoint=job.init_from.checkpoint,
                         source_step=source_step, load=job.init_from.load)
    # Step 0 is saved so that a spike in the first `rollback_steps` can roll back.
    setup.checkpoints.save(0, Due(frozenset({PERSISTENT})), state, setup.pipeline.get_state(),
                           supervision.checkpoint_item(program.pods))
    return state


def _resume_data(setup: TrainSetup, supervision: Supervision, data_state: dict) -> None:
    """The pipeline at a checkpoint's data position, with every skip the ledger holds."""
    setup.pipeline.set_state(data_state)
    for start, end in supervision.ledger.skip_ranges():
        setup.pipeline.add_skip_range(start, end)


def _note_resize(setup: TrainSetup, supervision: Supervision, item: dict, step: int) -> None:
    """A restore onto another pod count than the checkpoint's: a `resize` event.

    Decided from the checkpoint (saved with the pod count that wrote it), so every host
    records the same event and two runs with the same resizes keep equal ledgers.
    """
    before, pods = (item or {}).get("pods", setup.job.topology.pods), setup.program.pods
    if before == pods:
        return
    cause = resize_cause(before, pods, item)
    supervision.ledger.record_resize(step, from_pods=before, to_pods=pods, cause=cause)
    setup.sink.event("resize", step, alert=True, from_pods=before, to_pods=pods, cause=cause)
    supervision.save_ledger()  # the event above is also its log line


def resize_cause(before: int, pods: int, item: dict | None) -> str:
    """Why a restore from a checkpoint of `before` pods runs on `pods`: a checkpoint saved at
    the hosts' agreed step of a notice (`remove-pod --drain`, a preemption) and restored on
    fewer pods is a planned removal; without one, the pod was lost."""
    if pods > before:
        return "pod returned"
    return "pod removed (planned)" if (item or {}).get("agreed") else "pod lost"


def _load_supervision(supervision: Supervision, item: dict, step: int) -> None:
    """The checkpoint's ledger merged with the run folder's, and its spike detector.

    The run folder's ledger also holds rollbacks decided after the last save. Only process 0
    writes it (and on TPU pods only host 0 may have it), so host 0's copy is broadcast:
    every host must apply exactly the same skips.
    """
    supervision.ledger = Ledger.from_dict((item or {}).get("ledger"))
    path = supervision.ledger_path
    local = path.read_text() if supervision.writes and path.exists() else ""
    shared = broadcast_text(local)
    if shared:
        try:
            run_ledger = Ledger.from_dict(json.loads(shared))
        except (ValueError, RecursionError) as error:  # it steers the skips: refuse it
            from palm_platform.yaml_safe import one_line

            raise ValueError(one_line(
                f"{path}: unreadable ledger ({error}). Fix: delete it (the "
                "checkpoint's own ledger is used) or restore it from a backup", 400)) from None
        supervision.ledger = supervision.ledger.merge(run_ledger)
    if (item or {}).get("spike_detector"):
        supervision.detector.load_state_dict(item["spike_detector"])
    supervision.detector.truncate(step)


def roll_back(setup: TrainSetup, supervision: Supervision, spike: Spike, data_state: dict,
              batch_size: int) -> Any:
    """Every host, in lock-step: restore an older checkpoint and skip the spike's data.

    Raises TrainingStopped when the fault policy stops the run instead.
    """
    checkpoints, sink = setup.checkpoints, setup.sink
    plan = plan_rollback(spike, checkpoints.persistent_steps(), setup.job.faults.spike,
                         supervision.ledger, data_state=data_state, batch_size=batch_size)
    plan.record(supervision.ledger)
    supervision.save_ledger()
    sink.event("spike", spike.step, alert=True, loss=spike.loss, rule=spike.rule,
               limit=spike.limit, description=spike.describe())
    if plan.action == "stop":
        sink.event("stop", spike.step, alert=True, reason=plan.reason)
        raise TrainingStopped(f"step {spike.step}: {plan.reason}")
    restored = checkpoints.roll_back_to(plan.restore_step)  # newer steps of both tiers dropped
    _resume_data(setup, supervision, restored.data_state)
    supervision.detector.truncate(plan.restore_step)
    # Every step from the restore point on runs again (the one dispatched after the spike
    # included).
    setup.goodput.rollback(to_step=plan.restore_step)
    sink.event("rollback", spike.step, alert=True, to_step=plan.restore_step,
               note=plan.note or "")
    sink.event("skip", spike.step, first_sequence=plan.first_sequence,
               end_sequence=plan.end_sequence, batches=plan.skip_batches)
    return restored.train_state
