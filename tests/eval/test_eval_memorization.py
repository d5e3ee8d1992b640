"""PaLM §8 memorization: a tiny model overfit on a small corpus continues the sequences it
trained on exactly, and not held-out ones; the sampled sequences are the trained ones."""

import json
import random

import jax
import pytest

from palm_platform.cli import main as palm
from palm_platform.eval.memorization import sample_trained_indices
from palm_platform.eval.restore import EvalInputError
from tests.support.eval_runs import train_run

WORDS = ("amber basil cedar delta ember fjord garnet harbor indigo juniper kestrel lagoon "
         "meadow nectar oasis pebble quartz raven saffron thistle umber violet willow xenon "
         "yarrow zephyr").split()


def test_trained_indices_avoid_skip_ranges_and_the_future():
    state = {"next_sequence": 100, "skip_ranges": [[10, 30], [50, 60]]}
    picked = sample_trained_indices(state, 70, seed=0)
    assert len(picked) == 70 and len(set(picked)) == 70
    assert all(0 <= i < 100 and not 10 <= i < 30 and not 50 <= i < 60 for i in picked)
    assert (picked == sample_trained_indices(state, 70, seed=0)).all()
    with pytest.raises(EvalInputError, match="no sequence"):
        sample_trained_indices({"next_sequence": 0}, 5, seed=0)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memorize")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(8)]
    (folder / "secrets.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return train_run(
        folder,
        data={
            "tokenizer": "builtin:default",
            "cache_dir": str(folder / "cache"),
            "sources": [
                {"name": "secrets", "paths": [str(folder / "secrets.jsonl")], "weight": 1.0}
            ],
        },
        # one device: what it memorizes does not depend on the mesh, and a step of 8 fake CPU
        # devices costs several times one device's
        topology={"pods": 1, "hosts_per_pod": 1, "chips_per_host": 1, "ici_topology": "1x1x1",
                  "local": True},
        mesh={"model": 1},
        devices=jax.devices()[:1],
        train={"steps": 250, "seq_len": 32, "batch_schedule": [{"sequences": 8}]},
        optimizer={"constant_steps": 1000},  # no lr decay: overfit fast
        checkpoint={"directory": "ckpt", "every_steps": 250, "keep_last": 1},
        faults={"spike": {"rollback_steps": 0}},  # retention: keep only the newest
        eval={"every_steps": 250, "heldout_fraction": 0.2, "sequences": 8},
    )


@pytest.mark.slow
def test_an_overfit_model_repeats_what_it_trained_on_and_not_held_out_text(
    overfit_run, tmp_path, capsys
):
    out = tmp_path / "mem.json"
    rc = palm(["eval", str(overfit_run), "--memorization", "16", "--prompt-tokens", "12",
               "--continuation-tokens", "12", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())["memorization"]
    assert result["trained"] == 16 and result["heldout"] >= 3
    assert result["trained_rate"] >= 0.9 and result["heldout_rate"] <= 0.1
    assert "memorization at step 250" in capsys.readouterr().out
    print(result)


@pytest.mark.slow
def test_prompt_and_continuation_must_fit_the_sequences(overfit_run, capsys):
    assert palm(["eval", str(overfit_run), "--memorization", "4"]) == 2  # 50 + 50 > 33 tokens
    assert "must fit" in capsys.readouterr().err
