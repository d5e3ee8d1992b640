"""Fine-tuning from a checkpoint (`init_from:`): the train loop in one process on 8 fake CPU
devices. The source run trains on the default mixture over 2 pods (2-way model parallel);
the fine-tune trains on code only over 1 pod (4-way model parallel)."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from palm.model import PaLM, cross_entropy_and_z_loss
from palm_platform.checkpoint.items import STATE
from palm_platform.data import build_pipeline
from palm_platform.data.tokenizer import load_tokenizer
from palm_platform.job import load_job
from palm_platform.mesh import make_mesh
from palm_platform.metrics.sink import read_records
from palm_platform.train.init_from import InitFromError, load_initial_state, preflight
from palm_platform.train.loop import Trainer
from palm_platform.train.optimizer import build_optimizer
from palm_platform.train.state import state_shardings
from tests.support.paths import TEST_JOBS

JOBS = TEST_JOBS
STDLIB = Path(sysconfig.get_paths()["stdlib"])
pytestmark = pytest.mark.slow  # every test reads the checkpoint of a source run trained here

HELD_OUT_CODE = ("shutil.py", "tempfile.py", "configparser.py", "gettext.py")  # not in builtin:code


def load(tmp_path: Path, name: str, **updates):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(JOBS / f"{name}.yaml", folder / "job.yaml")
    job = load_job(folder / "job.yaml")
    for section, fields in updates.items():
        value = getattr(job, section)
        job = job.model_copy(update={section: value.model_copy(update=fields) if hasattr(
            value, "model_copy") else fields})
    return job


def run(job, run_dir: Path | None = None):
    trainer = Trainer(job, Path(run_dir or job.run_dir))
    try:
        summary = trainer.run()
        params = jax.tree.map(np.asarray, trainer.final_state.params)
    finally:
        trainer.close()
    return summary, params, read_records(Path(run_dir or job.run_dir))


def mean_loss(params, model_cfg, tokens_BxL1) -> float:
    """Next-token cross-entropy of `params` on these rows (no z-loss: the `loss` metric)."""
    logits, _ = jax.jit(lambda p, t: PaLM(model_cfg).apply({"params": p}, t))(
        params, tokens_BxL1[:, :-1]
    )
    return float(cross_entropy_and_z_loss(logits, jnp.asarray(tokens_BxL1[:, 1:]), 0.0)[0])


def held_out_rows(texts, seq_len: int, rows: int = 16) -> np.ndarray:
    tokenizer = load_tokenizer("builtin:default")
    ids = np.concatenate([np.asarray(tokenizer.encode(t) + [1], np.int32) for t in texts])
    usable = min(rows, len(ids) // (seq_len + 1))
    return ids[: usable * (seq_len + 1)].reshape(usable, seq_len + 1)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    job = load(tmp_path_factory.mktemp("source"), "finetune-source")
    summary, params, _ = run(job)
    return job, params


def finetune_job(tmp_path: Path, source_job, name="finetune-code", **init_from):
    job = load(tmp_path, name)
    return job.model_copy(update={"init_from": job.init_from.model_copy(
        update={"checkpoint": source_job.checkpoint.directory, **init_from})})


@pytest.fixture(scope="module")
def finetuned(source, tmp_path_factory):
    job = finetune_job(tmp_path_factory.mktemp("finetune"), source[0])
    summary, params, records = run(job)
    return job, summary, params, records


def test_finetune_restores_the_source_parameters_onto_another_mesh(source, finetuned):
    # Source: 2 pods x 2-way model parallel; fine-tune: 1 pod x 4-way. Its first state holds
    # exactly the source's final parameters, resharded, with a fresh step and optimizer.
    job = finetuned[0]
    state, used = load_initial_state(job, *_state_for(job))
    assert used == source[0].train.steps and int(state.step) == 0
    assert state.params["layers"]["mlp"]["gate"].sharding.spec == PartitionSpec(
        None, "data", "model"
    )
    for a, b in zip(jax.tree.leaves(source[1]), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    event = next(r for r in finetuned[3] if r["kind"] == "init_from")
    assert event["source_step"] == source[0].train.steps


def test_finetune_step0_loss_equals_the_source_models_loss_on_that_batch(source, finetuned):
    job = finetuned[0]
    pipeline = build_pipeline(job.data, seq_len=job.seq_len, base_dir=Path.cwd(),
                              process_index=0, process_count=1)
    first_batch = pipeline.local_batch(job.train.batch_size_at(0))
    expected = mean_loss(source[1], job.model.build(), first_batch)
    first_step = next(r for r in finetuned[3] if r["kind"] == "step")
    assert first_step["step"] == 1
    assert first_step["loss"] == pytest.approx(expected, rel=2e-3)  # bfloat16 compute, other mesh


def test_finetuning_on_code_lowers_held_out_code_loss(source, finetuned):
    job, _, params, _ = finetuned
    cfg = job.model.build()
    code = held_out_rows([(STDLIB / n).read_text() for n in HELD_OUT_CODE], job.seq_len)
    before, after = mean_loss(source[1], cfg, code), mean_loss(params, cfg, code)
    prose = held_out_rows([(STDLIB / "LICENSE.txt").read_text()], job.seq_len)
    print(f"held-out code loss {before:.3f} -> {after:.3f}; prose "
          f"{mean_loss(source[1], cfg, prose):.3f} -> {mean_loss(params, cfg, prose):.3f}")
    assert after < before - 0.05


def test_a_restart_resumes_from_the_runs_own_checkpoint_not_init_from(source, finetuned, tmp_path):
    job = finetuned[0]
    copy = tmp_path / "ckpt"  # the fine-tune's checkpoints; its source is then made unreadable
    shutil.copytree(job.checkpoint.directory, copy)
    gone = job.model_copy(update={
        "checkpoint": job.checkpoint.model_copy(update={"directory": str(copy)}),
        "init_from": job.init_from.model_copy(update={"checkpoint": str(tmp_path / "deleted")}),
        "train": job.train.model_copy(update={"steps": job.train.steps + 2}),
    })
    preflight(gone)  # the run has its own checkpoint: init_from is not even checked
    summary, _, records = run(gone, tmp_path / "run")
    assert summary.extra["start_step"] == job.train.steps
    assert not [r for r in records if r["kind"] == "init_from"]


def test_a_missing_init_from_directory_is_a_clear_error(source, tmp_path):
    job = finetune_job(tmp_path, source[0], checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(
        InitFromError, match=r"init_from.checkpoint: .*nowhere does not exist\. Fix"
    ):
        preflight(job)


def test_palm_run_rejects_a_bad_init_from_before_starting_with_exit_code_2(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    shutil.copy(JOBS / "finetune-code.yaml", folder / "job.yaml")  # its source-ckpt is absent
    result = subprocess.run([sys.executable, "-m", "palm_platform.cli", "run", "--direct",
                             str(folder / "job.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "init_from.checkpoint" in lines[0] and "source-ckpt" in lines[0]


def test_a_checkpoint_from_another_preset_is_rejected_naming_both_shapes(source, tmp_path):
    job = finetune_job(tmp_path, source[0])
    other = job.model_copy(
        update={"model": job.model.model_copy(update={"overrides": {"d_model": 64}})}
    )
    with pytest.raises(InitFromError) as error:
        preflight(other)
    message = str(error.value)
    assert "\n" not in message and "model.preset" in message
    assert "[1024, 128]" in message and "[1024, 64]" in message


def test_another_embedding_padding_is_rejected(source, tmp_path):
    job = finetune_job(tmp_path, source[0])
    padded = job.model_copy(update={"model": job.model.model_copy(
        update={"overrides": {"vocab_pad_multiple": 768}})})
    with pytest.raises(
        InitFromError,
        match=r"params/embedding of shape \[1024, 128\], model .* needs "
        r"\[1536, 128\]\. Fix: set init_from.new_vocab_rows",
    ):
        preflight(padded)


def _state_for(job):
    cfg = job.model.build()
    tx = build_optimizer(job.optimizer)[0]
    mesh = make_mesh(job.topology.pods, job.data_parallel, job.mesh.model)
    abstract, shardings = state_shardings(cfg, tx, mesh)
    return abstract, tx, shardings


@pytest.mark.parametrize("how", ["mean", "normal"])
def test_a_grown_vocabulary_keeps_old_rows_and_initialises_new_ones(source, tmp_path, how):
    job = finetune_job(tmp_path, source[0], new_vocab_rows=how)
    job = job.model_copy(
        update={"model": job.model.model_copy(update={"overrides": {"vocab_size": 1040}})}
    )
    state, _ = load_initial_state(job, *_state_for(job))
    embedding = np.asarray(state.params["embedding"])
    old = source[1]["embedding"]
    np.testing.assert_array_equal(embedding[:1024], old)
    if how == "mean":
        np.testing.assert_allclose(
            embedding[1024:], np.broadcast_to(old.mean(0), (16, 128)), atol=1e-6
        )
    else:
        assert 0.7 < embedding[1024:].std() < 1.3 and np.all(embedding[1024:] != 0)


def _truncate_a_state_file(step_dir: Path) -> None:
    victim = max(
        (p for p in (step_dir / STATE).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def test_a_damaged_step_is_an_error_unless_the_job_allows_an_older_one(source, tmp_path):
    copy = tmp_path / "source-ckpt"
    shutil.copytree(source[0].checkpoint.directory, copy)
    newest = max(int(p.name) for p in copy.iterdir() if p.name.isdigit())
    _truncate_a_state_file(copy / str(newest))
    job = finetune_job(tmp_path, source[0], checkpoint=str(copy))
    with pytest.raises(
        InitFromError, match=rf"damaged, step {newest}: .*Fix: set init_from.fallback_to_older"
    ):
        load_initial_state(job, *_state_for(job))
    allowed = job.model_copy(
        update={"init_from": job.init_from.model_copy(update={"fallback_to_older": True})}
    )
    _, used = load_initial_state(allowed, *_state_for(allowed))
    assert used < newest


def test_params_and_optimizer_also_restores_the_optimizer_state(source, tmp_path):
    import orbax.checkpoint as ocp

    from palm_platform.checkpoint.items import single_device_abstract_state

    job = finetune_job(tmp_path, source[0], load="params_and_optimizer")
    state, used = load_initial_state(job, *_state_for(job))
    step_dir = Path(source[0].checkpoint.directory) / str(used)
    abstract = single_device_abstract_state(step_dir)
    saved = ocp.PyTreeCheckpointer().restore(step_dir / STATE, args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))
    assert int(state.step) == 0
    def arrays(tree):  # a multiset: the metadata orders a state's fields by name, optax does not
        return sorted((np.shape(x), np.asarray(x).tobytes()) for x in jax.tree.leaves(tree))

    assert arrays(saved["opt_state"]) == arrays(state.opt_state)
    other = job.model_copy(
        update={"optimizer": job.optimizer.model_copy(update={"frozen": ["embedding"]})}
    )
    with pytest.raises(
        InitFromError, match=r"init_from.load: .* optimizer state .*Fix: use load: params"
    ):
        load_initial_state(other, *_state_for(other))
