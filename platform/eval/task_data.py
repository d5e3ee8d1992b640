"""The offline harness tasks' data, made here with fixed seeds (the machines running the
tests cannot download datasets). `python -m palm_platform.eval.task_data` rewrites the
JSONL files in platform/eval/tasks/ (the corpus tasks depend on this Python's standard
library text, so regenerate only on purpose). The corpus tasks' passages come from the
embedded corpus's token store, decoded: the documents training reads.

    palm_arithmetic  "47 + 385 =" -> "432": two- and three-digit sums and differences
    palm_cloze       a passage of the embedded corpus and four continuations, one real
    palm_corpus_ppl  passages of the embedded corpus, scored whole (bits per byte)
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"


def arithmetic(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        a, b = rng.randint(10, 999), rng.randint(10, 99)
        op = rng.choice("+-")
        rows.append({"question": f"{a} {op} {b} =", "answer": str(a + b if op == "+" else a - b)})
    return rows


def _passages(
    rng: random.Random, documents: list[str], count: int, length: int
) -> list[tuple[str, int]]:
    """(document, start) of `count` random windows of `length` characters."""
    usable = [d for d in documents if len(d) > 2 * length]
    out = []
    for _ in range(count):
        doc = rng.choice(usable)
        out.append((doc, rng.randrange(0, len(doc) - length)))
    return out


def cloze(rng: random.Random, documents: list[str], count: int) -> list[dict]:
    rows = []
    for doc, start in _passages(rng, documents, count, 240):
        context, truth = doc[start : start + 200], doc[start + 200 : start + 240]
        distractors = [d[s : s + 40] for d, s in _passages(rng, documents, 3, 40)]
        choices = [truth, *distractors]
        rng.shuffle(choices)
        rows.append({"context": context, "choices": choices, "label": choices.index(truth)})
    return rows


def corpus_ppl(rng: random.Random, documents: list[str], count: int) -> list[dict]:
    return [
        {"text": doc[start : start + 400]} for doc, start in _passages(rng, documents, count, 400)
    ]


def store_documents(data_config=None, base_dir: Path | None = None) -> Iterator[str]:
    """Every document of a job's token store, decoded, sources and documents in input order
    (default: the embedded corpus's store, prepared first if missing). The same text as the
    input files: the tokenizer is lossless. Read by document bounds, never by a scan."""
    from palm_platform.data.config import DataConfig
    from palm_platform.data.pipeline import check_data
    from palm_platform.data.store_sources import open_sources

    config = data_config or DataConfig()
    base_dir = Path.cwd() if base_dir is None else base_dir
    tokenizer, resolved = check_data(config, base_dir)
    for source in open_sources(config, base_dir, tokenizer, resolved):
        tokens, start = source.tokens, 0
        for end in tokens.document_ends(range(tokens.num_documents)):
            yield tokenizer.decode(tokens[start:int(end)])  # the EOS left out
            start = int(end) + 1


def write_all(directory: Path = TASKS_DIR) -> None:
    documents = list(store_documents())  # the corpus tasks read the store training reads
    made = {
        "palm_arithmetic": {"train": arithmetic(random.Random(1), 50),
                            "test": arithmetic(random.Random(2), 200)},
        "palm_cloze": {"train": cloze(random.Random(3), documents, 20),
                       "test": cloze(random.Random(4), documents, 200)},
        "palm_corpus_ppl": {"test": corpus_ppl(random.Random(5), documents, 50)},
    }
    for task, splits in made.items():
        for split, rows in splits.items():
            path = directory / f"{task}.{split}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    write_all()
