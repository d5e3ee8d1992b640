"""`palm eval`: the `palm` model for lm-evaluation-harness scores like the model's own forward
pass, the shipped offline tasks run, a trained checkpoint beats step 0, bad input exits 2."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from lm_eval.api.instance import Instance

from palm.model import PaLM
from palm_platform.cli import main as palm
from palm_platform.eval.generate import Sampling, generate_ids
from palm_platform.eval.harness import PalmLM, cut_at
from palm_platform.eval.restore import restore_run
from tests.support.eval_runs import shared_run
from tests.support.paths import ROOT

pytestmark = pytest.mark.slow

SHIPPED = ROOT / "platform" / "eval" / "tasks"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def lm(run_dir):
    run = restore_run(run_dir)
    return PalmLM(run.params, run.model_cfg, run.tokenizer, batch_size=4, max_length=64)


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_is_the_forward_pass_log_probability(lm):
    tok = lm.tokenizer
    ids = [tok.eos_id, *tok.encode("def main(): return 1")]
    logits, _ = PaLM(lm.config).apply({"params": lm.params}, np.asarray([ids[:-1]], np.int32))
    logp = np.asarray(logits[0] - np.log(np.exp(np.asarray(logits[0], np.float64)).sum(-1,
                                                                                          keepdims=True)))
    n = len(tok.encode(" return 1"))
    expected = sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1 - n, len(ids) - 1))
    (score, _), = lm.loglikelihood([request("loglikelihood", "def main():", " return 1")])
    assert score == pytest.approx(expected, rel=1e-4)


def test_the_greedy_flag_and_batching(lm):
    tok = lm.tokenizer
    context = "for i in range("
    greedy = tok.decode(generate_ids(lm.params, lm.config, [[tok.eos_id, *tok.encode(context)]],
                                     Sampling(max_new_tokens=1), -1)[0])
    requests = [request("loglikelihood", context, c) for c in (greedy, "zzz", "10):", "x")] * 2
    together = lm.loglikelihood(requests)  # 8 requests: two batches of 4
    assert together[0][1] and not together[1][1]
    alone = [lm.loglikelihood([r])[0] for r in requests[:4]]
    assert [s for s, _ in alone] == pytest.approx([s for s, _ in together[:4]], rel=1e-5)
    assert [g for _, g in alone] == [g for _, g in together[:4]]


def test_rolling_equals_scoring_the_whole_text_after_eos(lm):
    text = "import os\nprint(os.getcwd())\n"
    (whole, _), = lm.loglikelihood([request("loglikelihood", "", text)])
    assert lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])[0] == pytest.approx(
        whole, rel=1e-5
    )
    long_text = text * 20  # longer than the 64-token context: several windows
    assert (
        lm.loglikelihood_rolling([request("loglikelihood_rolling", long_text)])[0] < 20 * whole / 2
    )


def test_generate_until_is_the_decode_cut_at_the_stop_sequence(lm):
    tok = lm.tokenizer
    raw = tok.decode(generate_ids(lm.params, lm.config, [[tok.eos_id, *tok.encode("x = ")]],
                                  Sampling(max_new_tokens=8), tok.eos_id)[0])
    stop = raw[3:5] if len(raw) > 5 else raw
    out = lm.generate_until(
        [request("generate_until", "x = ", {"until": [stop], "max_gen_toks": 8})]
    )
    assert out == [cut_at(raw, [stop])] and cut_at("ab\ncd", ["\n"]) == "ab"


def evaluate(capsys, *args) -> dict:
    out = Path(args[0]).parent / f"results-{len(list(Path(args[0]).parent.glob('results-*')))}.json"
    assert palm(["eval", *map(str, args), "--output", str(out)]) == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def test_the_trained_checkpoint_beats_step_0_on_a_shipped_task(run_dir, capsys):
    tasks = ["--tasks", "palm_corpus_ppl,palm_cloze,palm_arithmetic", "--limit", "12"]
    trained = evaluate(capsys, run_dir, *tasks)
    table = capsys.readouterr().out
    start = evaluate(capsys, run_dir, *tasks, "--step", "0")
    assert trained["run"]["step"] == 20 and start["run"]["step"] == 0
    bpb = {name: r["results"]["palm_corpus_ppl"]["bits_per_byte,none"] for name, r in
           (("trained", trained), ("start", start))}
    assert bpb["trained"] < bpb["start"] - 1.0 and math.isfinite(bpb["trained"])
    assert 0 <= trained["results"]["palm_cloze"]["acc,none"] <= 1
    assert "palm_arithmetic" in trained["results"] and "bits_per_byte" in table


def test_a_folder_of_user_tasks(run_dir, tmp_path, capsys):
    shutil.copy(SHIPPED / "palm_data.py", tmp_path / "palm_data.py")
    shutil.copy(SHIPPED / "palm_cloze.test.jsonl", tmp_path / "my_cloze.test.jsonl")
    yaml_text = (SHIPPED / "palm_cloze.yaml").read_text()
    yaml_text = yaml_text.replace("task: palm_cloze", "task: my_cloze").replace(
        "training_split: train\nfewshot_split: train\n", "")
    (tmp_path / "my_cloze.yaml").write_text(yaml_text)
    result = evaluate(capsys, run_dir, "--tasks", "my_cloze", "--include-path", tmp_path,
                      "--limit", "4", "--num-fewshot", "0")
    assert 0 <= result["results"]["my_cloze"]["acc,none"] <= 1


def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    assert palm(["eval", str(run_dir), "--tasks", "no_such_task"]) == 2
    assert "unknown task(s) ['no_such_task']" in capsys.readouterr().err
    existing = tmp_path / "r.json"
    existing.write_text("keep")
    assert palm(["eval", str(run_dir), "--tasks", "palm_cloze", "--output", str(existing)]) == 2
    assert "not overwritten" in capsys.readouterr().err and existing.read_text() == "keep"
    assert palm(["eval", str(run_dir)]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_scores_go_to_the_runs_own_wandb_run(run_dir, tmp_path, capsys):
    job = json.loads((run_dir / "job.json").read_text())
    job["metrics"]["wandb_mode"] = "offline"
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert palm(["eval", str(tmp_path), "--tasks", "palm_cloze", "--limit", "2"]) == 0
    err = capsys.readouterr().err
    run_id = err.split("logged to W&B run ")[1].split()[0]
    assert run_id.startswith("eval-tiny-") and list(
        (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    )


def test_flattened_scores_keep_metrics_and_drop_stderr():
    from palm_platform.eval.wandb_log import flatten

    report = {"results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "t"}},
              "memorization": {"trained_rate": 1.0, "step": 3}}
    assert flatten(report) == {"harness/t/acc": 0.5, "memorization/trained_rate": 1.0,
                               "memorization/step": 3.0}
