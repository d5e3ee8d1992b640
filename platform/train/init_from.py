"""Fine-tuning: a new run's first train state, read from another run's checkpoint.

    init_from.checkpoint/<step>/state  --metadata only-->  shapes checked against the model
                                       --Orbax partial restore onto this job's shardings-->
    params (+ optimizer state with load: params_and_optimizer); new vocabulary rows filled

Orbax restores each array onto the target sharding whatever mesh wrote it (another pod
count, model degree or host count), so resharding is the restore itself. Only the `params`
(and optionally `opt_state`) subtrees are read (`partial_restore`). The source directory is
only read: no CheckpointManager is opened on it (a manager would create it and clean up
another run's temporary folders).

`check_init_from` runs before any worker starts (`palm run`) and again in the train loop;
errors are one line naming the field, both shapes and the fix.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from palm_platform.checkpoint.errors import CheckpointNotFound
from palm_platform.checkpoint.inventory import checkpoint_path, list_checkpoints
from palm_platform.checkpoint.items import STATE
from palm_platform.checkpoint.manifest import (
    Damage,
    check_against_manifest,
    describe_error,
    read_manifest,
)
from palm_platform.job.train import InitFromConfig
from palm_platform.train.state import TrainState

log = logging.getLogger("palm")

EMBEDDING = "embedding"


class InitFromError(ValueError):
    """An `init_from:` that cannot be used; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """What `check_init_from` decided: which step to read and how many embedding rows to add."""

    directory: str
    candidates: tuple[int, ...]  # the chosen step first, then older ones if fallback is allowed
    saved_rows: int | None  # embedding rows in the checkpoint when the vocabulary grows


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {
        _path(keys): tuple(leaf.shape) for keys, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def saved_state_metadata(step_dir) -> dict:
    """The saved train state's tree of array metadata (shapes, dtypes), read without loading."""
    metadata = ocp.PyTreeCheckpointer().metadata(step_dir / STATE)
    return getattr(metadata, "item_metadata", metadata).tree


def candidate_steps(cfg: InitFromConfig) -> tuple[str, tuple[int, ...]]:
    """(directory, steps to try in order): the requested or newest complete step, then older."""
    directory = checkpoint_path(cfg.checkpoint)
    try:
        complete = sorted(i.step for i in list_checkpoints(directory) if i.complete)
    except CheckpointNotFound:
        raise InitFromError(
            f"init_from.checkpoint: {directory} does not exist. Fix: give the checkpoint "
            "directory of the run to start from (the folder holding its numbered step folders)"
        ) from None
    if not complete:
        raise InitFromError(
            f"init_from.checkpoint: {directory} holds no complete checkpoint. Fix: point it at a "
            "run's checkpoint.directory that has finished at least one save"
        )
    if cfg.step is None:
        first = complete[-1]
    elif cfg.step in complete:
        first = cfg.step
    else:
        raise InitFromError(
            f"init_from.step: {directory} has no complete checkpoint for step {cfg.step}; complete "
            f"steps: {complete}. Fix: pick one of those or leave init_from.step out (newest)"
        )
    older = [s for s in reversed(complete) if s < first] if cfg.fallback_to_older else []
    return str(directory), (first, *older)


def check_shapes(cfg: InitFromConfig, saved: dict, expected_params, model_name: str,
                 where: str) -> int | None:
    """Compare the checkpoint's parameter shapes with the model's; returns the checkpoint's
    embedding row count when the job grows the vocabulary, else None. Raises InitFromError."""
    if "params" not in saved:
        raise InitFromError(f"init_from.checkpoint: {where} holds no train state parameters")
    have, want = _shapes(saved["params"]), _shapes(expected_params)
    for path in sorted(set(have) | set(want)):
        if path not in want or path not in have:
            side = "checkpoint" if path in have else f"model {model_name}"
            raise InitFromError(
                f"model.preset: {where} and model {model_name} have different parameters: only the "
                f"{side} has params/{path}. Fix: use the preset (and overrides) the checkpoint was "
                "trained with"
            )
        if have[path] == want[path]:
            continue
        grows = (path == EMBEDDING and have[path][1:] == want[path][1:]
                 and want[path][0] > have[path][0])
        if grows and cfg.new_vocab_rows is not None:
            return have[path][0]
        fix = ("set init_from.new_vocab_rows (mean or normal) to initialise the new rows, or use "
               "the checkpoint's vocab_size and vocab_pad_multiple") if grows else (
               "use the preset (and overrides: vocab_size, vocab_pad_multiple, ...) the "
               "checkpoint was trained with")
        raise InitFromError(
            f"model.preset: {where} has params/{path} of shape {list(have[path])}, model "
            f"{model_name} needs {list(want[path])}. Fix: {fix}"
        )
    return None


def check_init_from(job, expected_params=None, opt_state=None) -> SourcePlan:
    """Everything about `job.init_from` that can be checked without loading an array.

    `expected_params`: the model's abstract parameters (default: from the job's model);
    `opt_state`: this job's abstract optimizer state, checked with load: params_and_optimizer.
    """
    cfg = job.init_from
    directory, candidates = candidate_steps(cfg)
    if expected_params is None:
        from palm_platform.train.state import _init_params

        model_cfg = job.model.build()
        # the key is made inside the trace: no device is touched (the driver of `palm run`)
        boxed = jax.eval_shape(lambda: _init_params(model_cfg, jax.random.key(0)))
        from flax import linen as nn

        expected_params = nn.meta.unbox(boxed)
    step_dir = checkpoint_path(directory) / str(candidates[0])
    where = f"checkpoint {step_dir}"
    try:
        saved = saved_state_metadata(step_dir)
    except Exception as error:  # noqa: BLE001 - unreadable metadata is damage, handled later
        if not cfg.fallback_to_older:
            raise InitFromError(
                f"init_from.checkpoint: cannot read {where}: {describe_error(error)}. Fix: "
                "set init_from.fallback_to_older: true, or pick another init_from.step"
            ) from None
        saved = saved_state_metadata(checkpoint_path(directory) / str(candidates[1])) \
            if len(candidates) > 1 else {}
    name = job.model.preset + (f" with {job.model.overrides}" if job.model.overrides else "")
    saved_rows = check_shapes(cfg, saved, expected_params, name, where)
    if cfg.load == "params_and_optimizer" and opt_state is not None:
        # as multisets: the metadata orders a state's fields by name, optax by definition
        have = sorted(tuple(x.shape) for x in jax.tree.leaves(saved.get("opt_state", [])))
        want = sorted(tuple(x.shape) for x in jax.tree.leaves(opt_state))
        if have != want:
            raise InitFromError(
                f"init_from.load: {where} has an optimizer state of {len(have)} arrays that "
                f"does not match this job's ({len(want)} arrays). Fix: use load: params, or "
                "the source run's optimizer recipe"
            )
    return SourcePlan(directory, candidates, saved_rows)


def _damage(step_dir) -> list[Damage]:
    """Process 0 checks the manifest; every process gets the same verdict."""
    damage: list[Damage] = []
    if jax.process_index() == 0:
        manifest = read_manifest(step_dir)
        if manifest is not None:
            damage = check_against_manifest(step_dir, manifest, checksums=False)
    if jax.process_count() > 1:
        count = int(ocp.multihost.broadcast_one_to_all(np.int32(len(damage))))
        if count and not damage:
            damage = [Damage(str(step_dir), "damaged (see host 0 log)")]
    return damage


def _fill_new_rows(embedding, saved_rows: int, how: str, seed: int, sharding):
    """Rows >= saved_rows (zeros after a non-strict restore) -> mean of the old rows, or N(0, 1)."""

    def fill(e_VxD):
        is_new_Vx1 = (jnp.arange(e_VxD.shape[0]) >= saved_rows)[:, None]
        if how == "mean":
            new_VxD = jnp.broadcast_to(e_VxD[:saved_rows].mean(0), e_VxD.shape)
        else:  # the pre-training initialiser: embeddings ~ N(0, 1)
            new_VxD = jax.random.normal(jax.random.key(seed), e_VxD.shape, e_VxD.dtype)
        return jnp.where(is_new_Vx1, new_VxD.astype(e_VxD.dtype), e_VxD)

    return jax.jit(fill, out_shardings=sharding)(embedding)


def load_initial_state(job, abstract_state: TrainState, tx, shardings: TrainState
                       ) -> tuple[TrainState, int]:
    """The fine-tune's step-0 state on this job's shardings, and the source step it came from."""
    cfg = job.init_from
    plan = check_init_from(job, abstract_state.params, abstract_state.opt_state)
    with_optimizer = cfg.load == "params_and_optimizer"
    item = {"params": abstract_state.params}
    if with_optimizer:
        item["opt_state"] = abstract_state.opt_state
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    if plan.saved_rows is not None:  # pad the embedding with zero rows; filled below
        restore_args["params"][EMBEDDING] = dataclasses.replace(
            restore_args["params"][EMBEDDING], strict=False)
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True)
    problems = []
    for step in plan.candidates:
        step_dir = checkpoint_path(plan.directory) / str(step)
        damage = _damage(step_dir)
        if not damage:
            try:
                with ocp.Checkpointer(handler) as reader:
                    restored = reader.restore(step_dir / STATE, args=ocp.args.PyTreeRestore(
                        item=item, restore_args=restore_args, partial_restore=True))
                break
            except Exception as error:  # noqa: BLE001 - any read failure means damage
                if jax.process_count() > 1:  # falling back alone would deadlock the others
                    raise InitFromError(
                        f"init_from: reading {step_dir} failed on host "
                        f"{jax.process_index()}: {describe_error(error)}"
                    ) from error
                damage = [Damage(str(step_dir), f"read failed: {describe_error(error)}")]
        problems.append(
            f"step {step}: {damage[0]}" + (f" (+{len(damage) - 1} more)" if len(damage) > 1 else "")
        )
        log.error("init_from: checkpoint step %d is damaged: %s", step, problems[-1])
    else:
        fix = (
            "restore the files from a copy, or pick another init_from.step"
            if cfg.fallback_to_older
            else "set init_from.fallback_to_older: true to use an older step, or pick another "
            "init_from.step"
        )
        raise InitFromError(
            f"init_from.checkpoint: {plan.directory}: damaged, {'; '.join(problems)}. Fix: {fix}"
        )
    params = restored["params"]
    if plan.saved_rows is not None:
        params = {**params, EMBEDDING: _fill_new_rows(
            params[EMBEDDING], plan.saved_rows, cfg.new_vocab_rows, job.train.seed,
            shardings.params[EMBEDDING])}
    if with_optimizer:
        opt_state = restored["opt_state"]  # restored into the structure of this job's optimizer
    else:
        opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    # made by a jitted function: a global array on every process (device_put of a local value
    # onto a sharding that spans other hosts' devices is not what multi-host JAX wants)
    step0 = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=shardings.step)()
    log.info("init_from: parameters of step %d from %s", step, plan.directory)
    return TrainState(step=step0, params=params, opt_state=opt_state), step


def preflight(job) -> None:
    """Before any worker starts: a fine-tune that has not saved a checkpoint of its own must
    be able to read its `init_from` checkpoint, with matching shapes. Raises InitFromError."""
    if job.init_from is None:
        return
    source, own = (
        checkpoint_path(job.init_from.checkpoint),
        checkpoint_path(job.checkpoint.directory),
    )
    if str(source).rstrip("/") == str(own).rstrip("/"):
        raise InitFromError(
            f"init_from.checkpoint: {source} is this job's own checkpoint.directory. Fix: give "
            "the fine-tune its own checkpoint.directory"
        )
    try:
        if any(i.complete for i in list_checkpoints(own)):
            return  # a restart: the run resumes from its own checkpoint, init_from is not read
    except CheckpointNotFound:
        pass
    check_init_from(job)
