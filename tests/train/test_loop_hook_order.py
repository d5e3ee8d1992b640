"""The order of the hooks never changes a run, and a save is decided once per step: the 2-pod
job with a poisoned range (a spike, a rollback, skipped batches), trained with its hooks in
order and reversed, ends bitwise equal (scripts/equivalence.py's hashes)."""

import importlib.util

import pytest

from tests.support.paths import ROOT

SCRIPT = ROOT / "scripts" / "equivalence.py"


def _equivalence():
    spec = importlib.util.spec_from_file_location("equivalence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CountingNotice:
    """A preemption notice that never fires and records each question (the real one is a
    collective that counts calls: two questions in one step would desynchronise the hosts)."""

    mechanism = "test"

    def __init__(self):
        self.asked: list[int] = []

    def reached(self, step: int) -> bool:
        self.asked.append(step)
        return False

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_the_poisoned_two_pod_run_is_bitwise_the_same_with_its_hooks_reversed(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train() moves into its folder: come back afterwards
    equivalence = _equivalence()
    notices: list[CountingNotice] = []

    def count_questions(trainer) -> None:
        trainer.setup.checkpoints.notice.close()
        trainer.setup.checkpoints.notice = notice = CountingNotice()
        notices.append(notice)

    runs = []
    for reverse in (False, True):
        (tmp_path / str(reverse)).mkdir()
        runs.append(equivalence.train(tmp_path / str(reverse), reverse, count_questions))
    in_order, reversed_ = runs
    assert in_order == reversed_
    assert in_order["ledger_kinds"] == "spike,rollback,skip"  # the run did roll back
    for notice in notices:  # one question per step: each next step, or back after the rollback
        asked = notice.asked
        assert asked[0] == 1 and asked[-1] == 36, asked
        assert all(b == a + 1 or b <= a for a, b in zip(asked, asked[1:], strict=False)), asked
        assert sum(b <= a for a, b in zip(asked, asked[1:], strict=False)) == 1  # one rollback
