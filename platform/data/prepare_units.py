"""Cut a source's input into units, one shard of the token store each, in input order.

The plan is made by the prepare job's driver from a listing of the files (sizes, mtimes)
and, for Parquet, the footers (row-group sizes); it never reads input bytes, and it never
depends on the worker count, so the store's shards are the same however many workers cut
them. Units:
- a run of consecutive whole small files (at most unit_mb together);
- a Parquet file bigger than unit_mb: runs of its row groups up to unit_mb;
- an uncompressed JSONL file bigger than unit_mb: byte ranges of unit_mb, a line belonging
  to the range it starts in (the shard task finds line starts; readers.iter_jsonl_range);
- anything else bigger (compressed, one-document text) and a builtin corpus
  name: one unit each, since they cannot be cut without reading them.

A shard is named by a hash of its unit (files, ranges, how they are read) and the files'
fingerprints (path, size, mtime), never by its position: an edited file changes only the
names of its own units. Where runs of small files end is chosen by a hash of each file's
path (content-defined boundaries, as in rsync or restic chunking) with unit_mb as a cap,
so one file growing or shrinking moves at most the boundaries next to it, not every later
group, as cutting by running size would.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from palm_platform.data import readers
from palm_platform.data.config import BUILTIN_PREFIX, SourceConfig
from palm_platform.data.documents import LengthLimit

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_LISTING_THREADS = 16  # fingerprints and footers of many gs:// objects are latency-bound


class PrepareInputError(ValueError):
    """An input the prepare job cannot read; the message names the file and the fix."""


@dataclass(frozen=True)
class Unit:
    """One shard's worth of input. `kind`: files (whole files), rows (row groups
    [start, stop) of one Parquet file), bytes (a byte range of one JSONL file)."""

    source: str
    kind: str
    files: tuple[str, ...]
    fingerprints: tuple[tuple[str, int, str], ...]
    format: str
    text_field: str
    limit: tuple[int, str]
    start: int = 0
    stop: int = 0

    def describe(self) -> dict:
        """The unit as the sidecar and the manifest record it (JSON)."""
        return {"kind": self.kind, "files": list(self.files), "format": self.format,
                "text_field": self.text_field, "start": self.start, "stop": self.stop,
                "limit": list(self.limit)}

    @property
    def fingerprint(self) -> str:
        return _hash([list(f) for f in self.fingerprints])

    @property
    def name(self) -> str:
        """The shard's name: what is read and how, and the inputs' fingerprints."""
        return _hash([self.describe(), self.fingerprint])[:24]

    @property
    def label(self) -> str:
        """How bad records of a byte range are located until merged (see prepare_stats)."""
        return f"{self.files[0]}@{self.start}"


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def file_listing(files: list[str]) -> list[tuple[str, int, str]]:
    """Fingerprints (path, size, mtime) of files, listed concurrently; a missing or
    unreadable file is a PrepareInputError naming it."""

    def one(path: str):
        try:
            return readers.file_fingerprint(path)
        except (OSError, ValueError) as e:
            raise PrepareInputError(f"{path}: cannot read the input file ({e}). Fix: restore "
                                    "it or remove it from data.sources") from None

    with ThreadPoolExecutor(_LISTING_THREADS) as pool:
        return list(pool.map(one, files))


def source_listing(source: SourceConfig) -> list[tuple[str, int, str]]:
    """The fingerprints of a (resolved) source's files in input order."""
    files: list[str] = []
    for path in source.paths:
        try:
            files.extend(readers.expand_path(path))
        except FileNotFoundError as e:
            raise PrepareInputError(f"data.sources[{source.name}]: {e}. Fix: correct the path "
                                    "or create the file") from None
    return file_listing(files)


def _format(source: SourceConfig, path: str) -> str:
    return readers.detect_format(path) if source.format == "auto" else source.format


def _parquet_groups(source: SourceConfig, path: str) -> list[int]:
    """Compressed bytes of each row group, from the footer; the text column must exist."""
    import fsspec
    import pyarrow.parquet as pq

    try:
        with fsspec.open(path, "rb") as f:
            metadata = pq.ParquetFile(f).metadata
            names = metadata.schema.to_arrow_schema().names
    except (OSError, ValueError) as e:
        raise PrepareInputError(f"{path}: not a readable Parquet file ({e}). Fix: replace it or "
                                "remove it from data.sources") from None
    if metadata.num_rows and source.text_field not in names:
        raise PrepareInputError(
            f"{path}: no column {source.text_field!r} (columns: {names[:8]}). Fix: set "
            f"text_field of source {source.name!r} to the text column")
    return [sum(metadata.row_group(g).column(c).total_compressed_size
                for c in range(metadata.num_columns)) for g in range(metadata.num_row_groups)]


def _runs(sizes: list[int], cap: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) runs of items whose sizes add up to at most `cap` (an item
    bigger than the cap alone)."""
    runs, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > cap:
            runs.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def plan_source(source: SourceConfig, unit_bytes: int, limit: LengthLimit,
                listing: list[tuple[str, int, str]] | None = None) -> list[Unit]:
    """A source's units in input order (see the module docstring)."""
    listing = source_listing(source) if listing is None else listing
    common = dict(source=source.name, format=source.format, text_field=source.text_field,
                  limit=(limit.max_chars, limit.action))
    small = [size for path, size, _ in listing
             if size <= unit_bytes and not path.startswith(BUILTIN_PREFIX)]
    # Expected files per run: a boundary follows a file whose path hash is 0 mod this. A
    # power of two of the median size, so one file's edit rarely changes it.
    per_run = 1
    if small:
        typical = max(1, int(statistics.median(small)))
        while per_run * 2 * typical <= unit_bytes:
            per_run *= 2
    units: list[Unit] = []
    group: list[tuple[str, int, str]] = []

    def flush() -> None:
        if group:
            units.append(Unit(kind="files", files=tuple(p for p, _, _ in group),
                              fingerprints=tuple(group), **common))
            group.clear()

    parquet = [path for path, _, _ in listing
               if not path.startswith(BUILTIN_PREFIX) and _format(source, path) == "parquet"]
    with ThreadPoolExecutor(_LISTING_THREADS) as pool:  # every footer: the column must exist
        footers = dict(zip(parquet, pool.map(lambda p: _parquet_groups(source, p), parquet),
                           strict=True))
    for fingerprint in listing:
        path, size, _ = fingerprint
        fmt = _format(source, path)
        if path.startswith(BUILTIN_PREFIX) or size > unit_bytes:
            flush()
            whole = Unit(kind="files", files=(path,), fingerprints=(fingerprint,), **common)
            if path.startswith(BUILTIN_PREFIX) or path.lower().endswith(_COMPRESSED):
                units.append(whole)
            elif fmt == "parquet":
                units.extend(Unit(kind="rows", files=(path,), fingerprints=(fingerprint,),
                                  start=a, stop=b, **common)
                             for a, b in _runs(footers[path], unit_bytes))
            elif fmt == "jsonl":
                units.extend(Unit(kind="bytes", files=(path,), fingerprints=(fingerprint,),
                                  start=a, stop=min(size, a + unit_bytes), **common)
                             for a in range(0, size, unit_bytes))
            else:  # a text file (one document): read whole
                units.append(whole)
            continue
        if group and sum(s for _, s, _ in group) + size > unit_bytes:
            flush()
        group.append(fingerprint)
        if int(_hash(path)[:8], 16) % per_run == 0:
            flush()
    flush()
    return units
