"""The train loop's checkpointer: Orbax CheckpointManager + manifest + verified restore.

One `Checkpointer` per JAX process; every process calls every method (Orbax synchronises
them with barriers on the JAX distributed client). Directories may be local or `gs://`:
the string goes unchanged through `etils.epath` to Orbax and TensorStore (see
`inventory.checkpoint_path`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from palm_platform.checkpoint import items
from palm_platform.checkpoint.config import CheckpointConfig
from palm_platform.checkpoint.errors import CheckpointCorrupt, CheckpointNotFound
from palm_platform.checkpoint.inventory import COMMIT_MARKER, checkpoint_path
from palm_platform.checkpoint.manifest import (
    Damage,
    check_against_manifest,
    describe_error,
    read_manifest,
    write_manifest,
)
from palm_platform.checkpoint.retention import preservation_policy

log = logging.getLogger(__name__)
_barrier_ids = itertools.count()


@jax.jit
def _device_copy(tree: Any) -> Any:
    """A copy of every array, on the same devices: the step after a save donates the originals."""
    return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored step, from whichever tier held it (the one restore type of the package)."""

    step: int
    train_state: Any
    data_state: dict
    ledger: dict  # the checkpoint's extras item: ledger, spike detector, pods
    tier: str = "persistent"  # "persistent", "local" (this host's RAM), "peer" (other hosts')
    bytes_local: int = 0  # read from RAM folders, every host's summed
    bytes_peer: int = 0  # received from other hosts, summed
    bytes_persistent: int = 0  # the step's size in persistent storage (its manifest)
    # A newer RAM step some host held, and why it was not restored (peer_restore.why_not_ram)
    newer_ram_step: int | None = None
    why_not_ram: str = ""

    def record(self) -> dict:
        """The `checkpoint_restored` record's fields."""
        fields = {"tier": self.tier, "bytes_local": self.bytes_local,
                  "bytes_peer": self.bytes_peer, "bytes_persistent": self.bytes_persistent}
        if self.newer_ram_step is not None:
            fields.update(newer_ram_step=self.newer_ram_step, why_not_ram=self.why_not_ram)
        return fields


class Checkpointer:
    """Saves and restores (train state, data iterator state, ledger) under one directory."""

    def __init__(self, config: CheckpointConfig, *, directory: epath.PathLike | str):
        self.config = config
        self.directory = checkpoint_path(directory)
        # No save decision policy: every Orbax save here is forced (`_save_now`); when a
        # step is saved is decided once, by `Checkpoints.due` (checkpoints.py).
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation_policy(config),
            enable_async_checkpointing=config.async_save,
            # a restarted run removes what a killed save left behind (`N.orbax-checkpoint-tmp-*`)
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            handler_registry=items.handler_registry(),
        )
        # JAX's preemption sync point needs one caller per step, with that step: Orbax also
        # asks it in its save and, on process 0, in the async finalize thread with the older
        # step just written, which moves that host's step counter back and can leave the
        # hosts on different sync steps (seen on the local cluster). preemption.py asks it;
        # every save here is forced, so Orbax needs no answer.
        self._manager.reached_preemption = lambda step: False
        self._manifest_writer: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._save_error: BaseException | None = None
        # Several processes: a save may start on a thread only if Orbax's barriers stay off
        # the devices' communicator (see the function, in Orbax's door compat/orbax.py).
        from palm_platform.compat.orbax import barriers_through_the_distributed_client

        self._save_on_a_thread = (jax.process_count() == 1
                                  or barriers_through_the_distributed_client())

    # -- saving -------------------------------------------------------------------------

    def save(
        self,
        step: int,
        train_state: Any,
        data_state: dict,
        ledger: dict,
    ) -> None:
        """Save `step` (the caller decides when: `Checkpoints.due`).

        Asynchronous by default. The caller waits only while the arrays are copied on the
        devices (one dispatched copy, so the next step may reuse the donated originals);
        Orbax's save (its barriers, copy to host memory, write, commit), old-step deletion
        and the manifest run on a background thread, with one process or several (there,
        Orbax's barriers go through JAX's distributed client, not the devices). A save
        waits for the previous one to finish.
        Checkpoints at or after `step` (an abandoned trajectory, after a rollback) are
        deleted first.
        """
        if not self.config.async_save:
            self._save_now(step, train_state, data_state, ledger)
            self.wait_until_finished()
            return
        self._join_saver()
        if not self._save_on_a_thread:  # an Orbax without distributed barriers (see above)
            self._save_now(step, train_state, data_state, ledger)
            return
        # Why a thread around Orbax's own async save: its synchronous part starts about a
        # dozen threads, slices every array and (with several processes) waits at barriers
        # for every host, 60-200 ms on a busy 2-core machine against a 100-1000 ms step of
        # the local jobs; a device copy is one dispatch.
        snapshot = _device_copy(train_state)
        self._saver = threading.Thread(target=self._save_in_background,
                                       args=(step, snapshot, data_state, ledger),
                                       name=f"palm-save-{step}", daemon=True)
        self._saver.start()

    def _save_in_background(
        self, step: int, train_state: Any, data_state: dict, ledger: dict
    ) -> None:
        try:
            self._save_now(step, train_state, data_state, ledger)
        except BaseException as error:  # noqa: BLE001 - re-raised by the next save or wait
            self._save_error = error

    def _join_saver(self) -> None:
        if self._saver is not None:
            self._saver.join()
            self._saver = None
        if self._save_error is not None:
            error, self._save_error = self._save_error, None
            raise RuntimeError(
                f"{self.directory}: a background checkpoint save failed: {error}"
            ) from error

    def _save_now(self, step: int, train_state: Any, data_state: dict, ledger: dict) -> None:
        # Orbax may delete the previous step when this save finalises; hash it first.
        self._join_manifest_writer()
        if any(s >= step for s in self._manager.all_steps()):
            # Training went back (a rollback) without `discard_after`; Orbax only saves
            # steps newer than its newest, and the newer ones are an abandoned trajectory.
            self._discard_after(step - 1)  # (we are the save thread: no join)
        saved = self._manager.save(
            step, args=items.save_args(train_state, data_state, ledger), force=True
        )
        if not saved:
            log.warning("checkpoint step %d: Orbax declined the save", step)
            return
        if jax.process_index() == 0:  # every host does the same: one line is enough
            log.debug(  # the "committed" line below is the one an operator needs
                "checkpoint step %d: arrays copied off the devices, writing to %s",
                step,
                self.directory,
            )
            self._manifest_writer = threading.Thread(
                target=self._write_manifest_when_committed,
                args=(step,),
                name=f"palm-manifest-{step}",
                daemon=True,
            )
            self._manifest_writer.start()

    def _write_manifest_when_committed(self, step: int) -> None:
        try:
            self._manager.wait_until_finished()
            step_dir = self.directory / str(step)
            if not (step_dir / COMMIT_MARKER).exists():
                log.error("checkpoint step %d was not committed; no manifest written", step)
                return
            manifest = write_manifest(step_dir, checksums=self.config.manifest_checksums)
            log.info(
                "checkpoint step %d committed: %d files in manifest", step, len(manifest["files"])
            )
        except Exception:  # noqa: BLE001 - reported again by wait_until_finished/save
            log.exception("checkpoint step %d: save or manifest failed", step)

    def _join_manifest_writer(self) -> None:
        if self._manifest_writer is not None:
            self._manifest_writer.join()
            self._manifest_writer = None

    def discard_after(self, step: int) -> list[int]:
        """Delete every checkpoint newer than `step`; call right after a rollback restore.

        Why: after rolling back to `step`, newer checkpoints hold the trajectory that
        spiked. Left in place, a crash before the next save would restore them, retention
        would count them as the newest, and Orbax would refuse to save older steps.
        """
        self._join_saver()
        return self._discard_after(step)

    def _discard_after(self, step: int) -> list[int]:
        self._wait_for_orbax()
        discarded = sorted(s for s in self._manager.all_steps() if s > step)
        for newer in discarded:
            self._manager.delete(newer)
        if discarded and jax.process_index() == 0:  # every host discards the same steps
            log.warning(
                "discarded checkpoints %s newer than rollback step %d", discarded, step
            )
        return discarded

    def wait_until_finished(self) -> None:
        """Block until the last save is committed and its manifest written, on every host."""
        self._join_saver()
        self._wait_for_orbax()

    def _wait_for_orbax(self) -> None:
        self._manager.wait_until_finished()
        self._join_manifest_writer()
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"palm_ckpt_finished_{next(_barrier_ids)}")

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()

    # -- reading ------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Committed steps (plus one being written asynchronously), oldest first."""
        self._join_saver()  # a save handed to the thread is listed once Orbax has it
        return sorted(self._manager.all_steps())

    def restore(self, abstract_train_state: Any, step: int | None = None) -> Restored:
        """Restore onto the shardings of `abstract_train_state` (any mesh, any process count).

        With `step=None`: the newest committed checkpoint whose files match its manifest
        and that reads back; damaged ones are logged with the damaged paths and skipped.
        With a step: that one or an error.
        """
        self.wait_until_finished()
        self._manager.reload()
        committed = sorted(self._manager.all_steps(), reverse=True)
        if not committed:
            raise CheckpointNotFound(
                f"{self.directory}: no complete checkpoint to restore (interrupted saves, "
                "if any, are ignored). Fix: check `checkpoint.directory`, or start from scratch"
            )
        if step is not None and step not in committed:
            raise CheckpointNotFound(
                f"{self.directory}: no complete checkpoint for step {step}; complete steps: "
                f"{sorted(committed)}. Fix: pick one of those"
            )
        damaged: dict[int, list[Damage]] = {}
        for candidate in [step] if step is not None else committed:
            damage = self._damage_agreed_by_all_hosts(candidate)
            if not damage:
                try:
                    return self._read(candidate, abstract_train_state)
                except Exception as error:  # noqa: BLE001 - any read failure means damage
                    if jax.process_count() > 1:
                        # Other hosts may be inside Orbax's collective read; falling back
                        # alone would deadlock them. The restart that follows will skip
                        # this step if the manifest check catches it then.
                        raise CheckpointCorrupt(
                            f"{self.directory / str(candidate)}: reading failed on host "
                            f"{jax.process_index()}: {describe_error(error)}"
                        ) from error
                    damage = [
                        Damage(
                            str(self.directory / str(candidate)),
                            f"read failed: {describe_error(error)}",
                        )
                    ]
            damaged[candidate] = damage
            if jax.process_index() == 0:  # the verdict is agreed by every host
                log.error(
                    "checkpoint step %d is damaged, skipping it: %s",
                    candidate,
                    "; ".join(map(str, damage)),
                )
        listing = "\n".join(f"  step {s}: " + "; ".join(map(str, d)) for s, d in damaged.items())
        raise CheckpointCorrupt(
            f"{self.directory}: no usable checkpoint, every candidate is damaged:\n{listing}\n"
            "Fix: restore the damaged files from a copy, or start from scratch"
        )

    def _read(self, step: int, abstract_train_state: Any) -> Restored:
        result = self._manager.restore(step, args=items.restore_args(abstract_train_state))
        if jax.process_index() == 0:  # every host restores the same step
            log.info("restored checkpoint step %d from %s", step, self.directory)
        return Restored(
            step=step,
            train_state=result[items.STATE],
            data_state=result[items.DATA],
            ledger=result[items.LEDGER],
        )

    def _damage_agreed_by_all_hosts(self, step: int) -> list[Damage]:
        """Process 0 checks the manifest; every host gets the same verdict."""
        damage: list[Damage] = []
        if jax.process_index() == 0:
            step_dir = self.directory / str(step)
            manifest = read_manifest(step_dir)
            if manifest is None:
                log.warning(
                    "checkpoint step %d has no manifest (writer stopped after the "
                    "commit); trusting the read to find damage",
                    step,
                )
            else:
                damage = check_against_manifest(
                    step_dir, manifest, checksums=self.config.verify_checksums_on_restore
                )
        if jax.process_count() > 1:
            count = ocp.multihost.broadcast_one_to_all(np.int32(len(damage)))
            if int(count) and not damage:
                damage = [Damage(str(self.directory / str(step)), "damaged (see host 0 log)")]
        return damage
