"""The prepare job's one task: read a unit, tokenise it, commit it as a shard of the store.

Runs in a Ray actor (prepare_ray.py) or in the driver's process (`in_process`); the same
function either way. Tokens come from documents.tokenize_documents, the one document loop,
so a shard's tokens are bitwise the same whichever worker builds it (and equal to the
single-process reference the tests keep, tests/support/token_cache_reference.py).
A task that finds its shard already committed with the same fingerprint and tokenizer
returns that sidecar: a task retried after its worker died just after the commit is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from palm_platform.data import readers, store
from palm_platform.data.documents import LengthLimit, tokenize_documents
from palm_platform.data.prepare_units import Unit
from palm_platform.data.tokenizer import Tokenizer


def _counted(documents: Iterable[str], stats: readers.ReadStats) -> Iterator[str]:
    for document in documents:  # iter_documents counts whole files' documents itself
        stats.documents += 1
        yield document


def tokenize_unit(unit: Unit, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, dict]:
    """The unit's token stream (each document's tokens, then EOS), the position of each EOS,
    and the read stats (with `lines`: the lines a byte range started, for absolute line
    numbers when stats are merged)."""
    stats = readers.ReadStats()
    limit = LengthLimit(*unit.limit)
    arrays: list[np.ndarray] = []
    for path in unit.files:
        if unit.kind == "rows":
            documents = _counted(readers.iter_parquet_row_groups(
                path, unit.text_field, stats, range(unit.start, unit.stop)), stats)
        elif unit.kind == "bytes":
            documents = _counted(readers.iter_jsonl_range(
                path, unit.start, unit.stop, unit.text_field, stats, unit.label), stats)
            path = unit.label
        else:
            documents = readers.iter_documents(path, unit.format, unit.text_field, stats)
        arrays.extend(tokenize_documents(documents, path, tokenizer, stats, limit))
    lengths = np.fromiter((len(a) + 1 for a in arrays), np.int64, len(arrays))
    ends = np.cumsum(lengths) - 1
    tokens = np.empty(int(lengths.sum()), store.TOKEN_DTYPE)
    tokens[ends] = tokenizer.eos_id
    for array, end in zip(arrays, ends, strict=True):
        tokens[end - len(array):end] = array
    return tokens, ends, {**stats.as_dict(), "lines": stats.lines}


def check_committed(root: str, unit: Unit, sidecar: dict, tokenizer_sha256: str) -> None:
    """A committed shard must be this unit's, made with this tokenizer (else StoreError)."""
    where = store.join(root, unit.source, unit.name)
    if sidecar.get("tokenizer_sha256") != tokenizer_sha256:
        raise store.StoreError(
            f"{where}.json: made with tokenizer sha256 {sidecar.get('tokenizer_sha256')}, the "
            f"job's is {tokenizer_sha256}. Fix: point data.store elsewhere or delete the store")
    if sidecar.get("fingerprint") != unit.fingerprint:
        raise store.StoreError(f"{where}.json: its input fingerprint differs from the unit's. "
                               "Fix: delete the shard and its sidecar, then prepare again")


def run_unit(root: str, unit: Unit, tokenizer: Tokenizer) -> dict:
    """Tokenise and commit one unit; returns its sidecar (the committed one if it exists)."""
    existing = store.read_sidecar(root, unit.source, unit.name)
    if existing is not None:
        check_committed(root, unit, existing, tokenizer.sha256)
        return existing
    tokens, ends, stats = tokenize_unit(unit, tokenizer)
    return store.write_shard(root, unit.source, unit.name, tokens, ends, {
        "unit": unit.describe(), "fingerprint": unit.fingerprint,
        "tokenizer_sha256": tokenizer.sha256, "stats": stats})
