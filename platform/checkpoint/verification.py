"""Check finalised checkpoints for damage: `palm ckpt verify DIR [STEP]`.

A checkpoint with a manifest is checked against it (every file present, of the recorded
size and CRC32); one without is read back in full (every array through TensorStore, both
JSON items), which is what OCDBT needs to notice a truncated data file.
"""

from __future__ import annotations

import dataclasses

from etils import epath

from palm_platform.checkpoint.errors import CheckpointNotFound
from palm_platform.checkpoint.inventory import CheckpointInfo, checkpoint_path, list_checkpoints
from palm_platform.checkpoint.manifest import (
    Damage,
    check_against_manifest,
    describe_error,
    read_manifest,
)


@dataclasses.dataclass(frozen=True)
class StepReport:
    step: int
    path: epath.Path
    method: str
    damage: list[Damage]


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    directory: epath.Path
    steps: list[StepReport]
    incomplete: list[CheckpointInfo]

    @property
    def ok(self) -> bool:
        return not any(s.damage for s in self.steps)

    @property
    def damaged(self) -> list[Damage]:
        return [d for s in self.steps for d in s.damage]


def read_back(step_dir: epath.Path) -> list[Damage]:
    """Read every array and JSON item of one checkpoint; any failure is damage to the item."""
    import orbax.checkpoint as ocp

    from palm_platform.checkpoint import items

    damage = []
    try:
        abstract = items.single_device_abstract_state(step_dir)
        with ocp.PyTreeCheckpointer() as reader:
            reader.restore(
                step_dir / items.STATE,
                args=ocp.args.PyTreeRestore(
                    item=abstract,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                ),
            )
    except Exception as error:  # noqa: BLE001 - any failure to read is the finding
        damage.append(Damage(str(step_dir / items.STATE), f"read failed: {describe_error(error)}"))
    for name in (items.DATA, items.LEDGER):
        try:
            with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
                reader.restore(step_dir / name)
        except Exception as error:  # noqa: BLE001
            damage.append(Damage(str(step_dir / name), f"read failed: {describe_error(error)}"))
    return damage


def verify_step(info: CheckpointInfo, *, checksums: bool = True) -> StepReport:
    manifest = read_manifest(info.path)
    if manifest is None:
        return StepReport(info.step, info.path, "read back (no manifest)", read_back(info.path))
    method = "manifest: sizes and CRC32s" if checksums else "manifest: sizes"
    damage = check_against_manifest(info.path, manifest, checksums=checksums)
    return StepReport(info.step, info.path, method, damage)


def verify(
    directory: str | epath.PathLike, step: int | None = None, *, checksums: bool = True
) -> VerifyReport:
    """Check every complete checkpoint under `directory` (or only `step`)."""
    root = checkpoint_path(directory)
    infos = list_checkpoints(root)
    complete = [i for i in infos if i.complete and (step is None or i.step == step)]
    if step is not None and not complete:
        have = sorted(i.step for i in infos if i.complete)
        raise CheckpointNotFound(
            f"{root}: no complete checkpoint for step {step}; complete steps: {have}. "
            "Fix: pass one of those steps, or none to verify all"
        )
    return VerifyReport(
        directory=root,
        steps=[verify_step(i, checksums=checksums) for i in complete],
        incomplete=[i for i in infos if not i.complete],
    )
