"""`palm generate`: restore a run's checkpoint, decode with the KV cache, batched, to EOS;
bad input is a one-line error with exit status 2."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from palm.decode import generate
from palm_platform.cli import main as palm
from palm_platform.eval.generate import Sampling, generate_ids, kv_cache_bytes
from palm_platform.eval.restore import restore_run
from tests.support.eval_runs import copy_run, shared_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def restored(run_dir):
    return restore_run(run_dir)


def completions(capsys, *args) -> tuple[int, list[str], str]:
    rc = palm(["generate", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, [line for line in out.splitlines() if not line.startswith("--- ")], err


def test_restores_the_newest_checkpoint_and_the_job_from_the_run_folder(restored):
    assert restored.step == 20 and restored.job.name == "eval-tiny"
    assert restored.tokenizer.vocab_size <= restored.model_cfg.vocab_size


def test_same_seed_same_text_other_seed_other_text(run_dir, capsys):
    args = [run_dir, "--prompt", "def main(", "--prompt", "The", "--temperature", "1.5",
            "--max-new-tokens", "24"]
    rc1, first, err = completions(capsys, *args, "--seed", "1")
    rc2, again, _ = completions(capsys, *args, "--seed", "1")
    rc3, other, _ = completions(capsys, *args, "--seed", "2")
    assert rc1 == rc2 == rc3 == 0
    assert first == again and first != other
    assert first[0].startswith("def main(") and first[1].startswith("The")
    assert "KV cache" in err and "one K/V head" in err


def test_a_batch_of_prompts_decodes_as_each_prompt_alone(restored):
    tok, cfg = restored.tokenizer, restored.model_cfg
    prompts = [[tok.eos_id, *tok.encode(t)] for t in ("abc", "xyz", "for i in")]
    sampling = Sampling(max_new_tokens=12)
    together = generate_ids(restored.params, cfg, prompts, sampling, eos_id=-1)
    alone = [generate_ids(restored.params, cfg, [p], sampling, eos_id=-1)[0] for p in prompts]
    assert together == alone and all(len(t) == 12 for t in together)


def test_prompts_of_different_lengths_in_one_batch_decode_as_each_alone(restored):
    tok, cfg = restored.tokenizer, restored.model_cfg
    texts = ("a", "def main(", "for i in range(10):", "The quick brown fox jumps over")
    prompts = [[tok.eos_id, *tok.encode(t)] for t in texts]
    assert len({len(p) for p in prompts}) == len(prompts)  # every length differs
    sampling = Sampling(max_new_tokens=16)
    together = generate_ids(restored.params, cfg, prompts, sampling, eos_id=-1)
    alone = [generate_ids(restored.params, cfg, [p], sampling, eos_id=-1)[0] for p in prompts]
    assert together == alone and all(len(t) == 16 for t in together)
    # The padded rows really decode at their own positions: shifting a short prompt to the
    # longest one's length (as a batch without per-row positions would) changes its tokens.
    longest = max(len(p) for p in prompts)
    shifted = generate(
        restored.params,
        np.asarray([[tok.eos_id] * (longest - len(prompts[0])) + prompts[0]], np.int32),
        jax.random.key(0),
        config=cfg,
        max_new_tokens=16,
    )
    assert np.asarray(shifted)[0, longest:].tolist() != together[0]


def test_decoding_stops_at_eos(restored):
    cfg, params = restored.model_cfg, restored.params
    prompt = np.asarray([[1, 5, 9, 12]], np.int32)
    free = np.asarray(generate(params, prompt, jax.random.key(0), config=cfg, max_new_tokens=8))
    stop_token = int(free[0, 6])  # the third new token plays EOS
    stopped = np.asarray(generate(params, prompt, jax.random.key(0), config=cfg, max_new_tokens=8,
                                  eos_id=stop_token))
    first = int(np.argmax(free[0, 4:] == stop_token)) + 4
    np.testing.assert_array_equal(stopped[0, : first + 1], free[0, : first + 1])
    assert (stopped[0, first:] == stop_token).all()


def test_top_k_one_and_a_tiny_top_p_are_greedy(restored):
    cfg, params = restored.model_cfg, restored.params
    prompt = np.asarray([[1, 5, 9, 12], [1, 7, 7, 3]], np.int32)
    greedy = generate(params, prompt, jax.random.key(0), config=cfg, max_new_tokens=10)
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = generate(params, prompt, jax.random.key(5), config=cfg, max_new_tokens=10,
                           temperature=2.0, **kw)
        np.testing.assert_array_equal(sampled, greedy)


def test_kv_cache_is_one_head_per_layer(restored):
    cfg = restored.model_cfg
    assert kv_cache_bytes(cfg, 2, 10) == 2 * cfg.num_layers * 2 * 10 * cfg.head_dim * 4


def one_line_error(capsys, *args) -> str:
    rc = palm(["generate", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    assert "no such run folder" in one_line_error(capsys, tmp_path / "nope", "--prompt", "x")
    assert "empty" in one_line_error(capsys, run_dir, "--prompt", "  ")
    long_prompt = "word " * 200
    assert "context" in one_line_error(capsys, run_dir, "--prompt", long_prompt)
    assert "no job.json" in one_line_error(capsys, tmp_path, "--prompt", "x")


def test_a_tokenizer_that_does_not_match_the_vocabulary_is_refused(run_dir, tmp_path, capsys):
    job = json.loads((run_dir / "job.json").read_text())
    job["model"]["overrides"]["vocab_size"] = 256
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert "vocab_size 256" in one_line_error(capsys, tmp_path, "--prompt", "x")


def test_every_checkpoint_damaged_is_refused_and_nothing_is_written(run_dir, tmp_path, capsys):
    copy = copy_run(run_dir, tmp_path / "copy")
    for data in (tmp_path / "copy" / "ckpt").glob("*/state/**/d/*"):
        data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    before = sorted(p.name for p in (tmp_path / "copy" / "ckpt").iterdir())
    assert "damaged" in one_line_error(capsys, copy, "--prompt", "x")
    assert sorted(p.name for p in (tmp_path / "copy" / "ckpt").iterdir()) == before
