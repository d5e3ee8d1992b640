"""Read documents from source files, counting and logging bad records instead of crashing.

Formats: JSONL (one JSON object per line, text under `text_field`), plain text (one document
per file: a file is one document, which keeps every byte of whitespace), Parquet (a text
column). Paths are local paths or fsspec URLs; folders and glob
patterns expand to their files in sorted order. Compressed files (.gz, .bz2, .xz, .zst) are
read through fsspec's compression inference.

Written by hand rather than with Grain's sources: a bad record must be counted, logged with
its file and line, and skipped without losing the rest of the file, and the documents are
read once to be tokenised into the token store (prepare_shard.py), so a streaming reader is
all that is needed here.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import fsspec

from palm_platform.data import corpus
from palm_platform.data.config import BUILTIN_PREFIX

log = logging.getLogger(__name__)

BAD_KINDS = ("bad_utf8", "bad_json", "missing_field", "empty_file", "empty_document", "bad_tokens",
             "too_long")
FIRST_BAD_KEPT = 5  # locations kept for the run's metrics event, summary and `palm status`
_LOGGED_PER_FILE_AND_KIND = 5  # keep logs readable on a badly broken file; counts stay exact
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")


@dataclass
class ReadStats:
    """Documents read and bad records skipped, per kind (see BAD_KINDS)."""

    documents: int = 0
    bad: collections.Counter = field(default_factory=collections.Counter)
    first_bad: list[str] = field(default_factory=list)  # "file:line kind", the first few
    position: int = 0  # line, row or record of the document last yielded (0: whole file)
    lines: int = 0  # lines started in a byte range of a big JSONL file (iter_jsonl_range)
    _logged: collections.Counter = field(default_factory=collections.Counter, repr=False)

    def record_bad(self, kind: str, path: str, line: int, detail: str) -> None:
        """Count a skipped record and log it with its file and line (1-based; 0: whole file)."""
        assert kind in BAD_KINDS, kind
        self.bad[kind] += 1
        if len(self.first_bad) < FIRST_BAD_KEPT:
            self.first_bad.append(f"{path}:{line} {kind}")
        self._logged[(path, kind)] += 1
        shown = self._logged[(path, kind)]
        if shown <= _LOGGED_PER_FILE_AND_KIND:
            log.warning("%s:%d: skipped %s: %s", path, line, kind, detail)
        elif shown == _LOGGED_PER_FILE_AND_KIND + 1:
            log.warning("%s: more %s records skipped; counted, no longer logged", path, kind)

    def as_dict(self) -> dict:
        return {"documents": self.documents, "bad": {k: self.bad.get(k, 0) for k in BAD_KINDS},
                "first_bad": list(self.first_bad)}


def detect_format(path: str) -> str:
    """Format from the file name: .jsonl/.json, .parquet, else text."""
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "text"


def expand_path(path: str) -> list[str]:
    """The files a configured path names (file, folder or glob); FileNotFoundError if none."""
    if path.startswith(BUILTIN_PREFIX):
        corpus.check_builtin_name(path)
        return [path]
    fs, fs_path = fsspec.core.url_to_fs(path)
    if any(ch in fs_path for ch in "*?["):
        found = sorted(fs.glob(fs_path))
    elif fs.isdir(fs_path):
        found = sorted(fs.find(fs_path))
    elif fs.exists(fs_path):
        found = [fs_path]
    else:
        found = []
    files = [p for p in found if not fs.isdir(p)]
    if not files:
        raise FileNotFoundError(f"{path} does not exist or matches no file")
    if "://" not in path:
        return files
    return [fs.unstrip_protocol(p) for p in files]


def file_fingerprint(path: str) -> tuple[str, int, str]:
    """(path, size, modification time): enough to notice that a source file changed."""
    if path.startswith(BUILTIN_PREFIX):
        return (path, 0, corpus.fingerprint(path))
    fs, fs_path = fsspec.core.url_to_fs(path)
    info = fs.info(fs_path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or ""
    return (path, int(info.get("size") or 0), str(mtime))


def iter_documents(path: str, fmt: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    """Documents of one file, as text."""
    if path.startswith(BUILTIN_PREFIX):
        for text in corpus.iter_builtin_documents(path):
            stats.documents += 1
            yield text
        return
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {"jsonl": _jsonl, "text": _text, "parquet": _parquet}
    for document in readers[fmt](path, text_field, stats):
        stats.documents += 1
        yield document


def _jsonl(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    seen = [0]  # lines read, to tell an empty file from one of blank or bad lines

    def numbered(f) -> Iterator[tuple[int, bytes]]:
        for seen[0], raw in enumerate(f, start=1):
            yield seen[0], raw

    with fsspec.open(path, "rb", compression="infer") as f:
        yield from jsonl_records(numbered(f), path, text_field, stats)
    if not seen[0]:
        stats.record_bad("empty_file", path, 0, "the file is empty")


def jsonl_records(lines: Iterable[tuple[int, bytes]], path: str, text_field: str,
                  stats: ReadStats) -> Iterator[str]:
    """Texts of numbered JSONL lines, bad ones counted: shared by whole files and by the
    byte ranges of big files that `palm data prepare` cuts (iter_jsonl_range)."""
    for line_number, raw in lines:
        if not raw.strip():
            continue  # blank lines (often a trailing one) are not records
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            stats.record_bad("bad_utf8", path, line_number, str(e))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            stats.record_bad("bad_json", path, line_number, str(e))
            continue
        except RecursionError:  # `[[[[...` deeper than Python's stack: a bad record too
            stats.record_bad("bad_json", path, line_number, "nested too deeply")
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats.record_bad(
                "missing_field", path, line_number, f"no string field {text_field!r}"
            )
            continue
        if not text:
            stats.record_bad("empty_document", path, line_number, f"{text_field!r} is empty")
            continue
        stats.position = line_number
        yield text


def _text(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    with fsspec.open(path, "rb", compression="infer") as f:
        data = f.read()
    if not data:
        stats.record_bad("empty_file", path, 0, "the file is empty")
        return
    stats.position = 0
    try:
        yield data.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    kept = []  # drop only the undecodable lines, keep the rest of the document
    for line_number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            kept.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            stats.record_bad("bad_utf8", path, line_number, str(e))
    if kept:
        yield "".join(kept)


def _parquet(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    yield from iter_parquet_row_groups(path, text_field, stats)


def iter_parquet_row_groups(path: str, text_field: str, stats: ReadStats,
                            row_groups: range | None = None) -> Iterator[str]:
    """Texts of a Parquet file, or of a run of its row groups (a `palm data prepare` unit);
    rows are numbered in the whole file either way."""
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb", compression="infer") as f:
        parquet_file = pq.ParquetFile(f)
        if parquet_file.metadata.num_rows == 0:
            stats.record_bad("empty_file", path, 0, "the file has no rows")
            return
        if text_field not in parquet_file.schema_arrow.names:
            stats.record_bad(
                "missing_field",
                path,
                0,
                f"no column {text_field!r} (columns: {parquet_file.schema_arrow.names}); "
                f"set text_field in the source config",
            )
            return
        groups = range(parquet_file.num_row_groups) if row_groups is None else row_groups
        row = sum(parquet_file.metadata.row_group(g).num_rows for g in range(groups.start))
        for batch in parquet_file.iter_batches(columns=[text_field], batch_size=4096,
                                               row_groups=list(groups)):
            for text in batch.column(0).to_pylist():
                row += 1
                if isinstance(text, bytes):
                    try:
                        text = text.decode("utf-8")
                    except UnicodeDecodeError as e:
                        stats.record_bad("bad_utf8", path, row, str(e))
                        continue
                if not isinstance(text, str):
                    stats.record_bad("missing_field", path, row, f"{text_field!r} is {text!r}")
                    continue
                if not text:
                    stats.record_bad("empty_document", path, row, f"{text_field!r} is empty")
                    continue
                stats.position = row
                yield text


def iter_jsonl_range(path: str, start: int, end: int, text_field: str, stats: ReadStats,
                     label: str) -> Iterator[str]:
    """Texts of the JSONL lines that start in bytes [start, end) of an uncompressed file.

    A line belongs to the range it starts in, so a range skips a partial first line (its
    start belongs to the range before) and reads its last line past `end`; no one reads the
    file to find line boundaries in advance. Lines are numbered from 1 within the range
    (absolute numbers need the earlier ranges' line counts: `stats.lines` counts the lines
    started here, for the caller to keep), and bad records are logged under `label`, which
    names the range."""
    lines = [0]

    def numbered(f) -> Iterator[tuple[int, bytes]]:
        position = start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # inside a line that began in the previous range
                position += len(f.readline())
        while position < end:
            raw = f.readline()
            if not raw:
                break
            position += len(raw)
            lines[0] += 1
            yield lines[0], raw

    with fsspec.open(path, "rb") as f:
        yield from jsonl_records(numbered(f), label, text_field, stats)
    stats.lines = lines[0]
