"""The `data:` section of a job file: which tokenizer, which sources, in what proportions.

Paths in a job file are relative to the job file's folder; `resolve_path` turns them into
absolute paths against the base directory the caller passes. Two special values make the
local job run offline on a fresh machine: `tokenizer: builtin:default` (the small tokenizer
bundled in `corpus/`) and source paths `builtin:default-corpus` (or one of its parts,
`builtin:code`, `builtin:docs`, `builtin:multilingual`; see corpus/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_PREFIX = "builtin:"
BUILTIN_TOKENIZER = "builtin:default"
BUILTIN_SOURCES = ("builtin:default-corpus", "builtin:code", "builtin:docs", "builtin:multilingual")

SourceFormat = Literal["jsonl", "text", "parquet", "auto"]

# Pre-tokenised ArrayRecord shards (`palm tokenizer encode`) were a source format until the
# token store made them redundant: ArrayRecord cannot open gs:// (array_record #120), so they
# never fitted a pod run, and `palm data prepare` tokenises once into a store every host
# reads in place. A job naming one gets this sentence.
ARRAYRECORD_REMOVED = ("ArrayRecord sources were removed: the token store replaced them "
                       "(ArrayRecord cannot open gs://). Fix: point the source at its text "
                       "(jsonl, parquet or text files) and run `palm data prepare JOB.yaml`")


def is_arrayrecord(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    return name.endswith((".arrayrecord", ".array_record")) or ".array_record-" in name


class DataConfigError(ValueError):
    """A data config that cannot be used; `field` is its path, e.g. data.sources[0].paths[1]."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class SourceConfig(BaseModel):
    """One data source: a set of files of one format, drawn with a relative weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short unique name of the source, used in logs and stats.")
    paths: list[str] = Field(
        min_length=1,
        description="Files, folders or glob patterns (local or any fsspec URL such as gs://); "
        "relative paths are relative to the job file. Or one builtin corpus name.",
    )
    format: SourceFormat = Field(
        default="auto",
        description="jsonl (one JSON object per line), text (one document per file), parquet "
        "(a text column), or auto (from the file extension).",
    )
    weight: float = Field(
        gt=0, description="Relative sampling weight of this source in the mixture (unitless)."
    )
    text_field: str = Field(
        default="text", description="JSON key or Parquet column that holds the document text."
    )

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("source name must not be empty")
        return name

    @field_validator("format", mode="before")
    @classmethod
    def _no_arrayrecord_format(cls, value):
        if value == "arrayrecord":
            raise ValueError(f"format arrayrecord: {ARRAYRECORD_REMOVED}")
        return value

    @field_validator("paths")
    @classmethod
    def _no_arrayrecord_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if is_arrayrecord(path):
                raise ValueError(f"{path}: {ARRAYRECORD_REMOVED}")
        return paths


class PrepareConfig(BaseModel):
    """How `palm data prepare` cuts the input into units (one shard of the store each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_mb: float = Field(
        default=128,
        gt=0,
        le=4096,
        description="Size of an input unit (MB of input): small files are grouped up to it, "
        "big JSONL files cut into newline-aligned byte ranges of it, Parquet files into runs "
        "of row groups of it. Each unit becomes one shard of the token store.",
    )


def _default_sources() -> list[SourceConfig]:
    return [
        SourceConfig(name="code", paths=["builtin:code"], weight=0.4),
        SourceConfig(name="docs", paths=["builtin:docs"], weight=0.5),
        SourceConfig(name="multilingual", paths=["builtin:multilingual"], weight=0.1),
    ]


class DataConfig(BaseModel):
    """Tokenizer, weighted sources and the seed that fixes every batch's content."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokenizer: str = Field(
        default=BUILTIN_TOKENIZER,
        description="Path of a SentencePiece .model file (relative to the job file), or "
        "'builtin:default' for the small tokenizer bundled with the embedded corpus.",
    )
    sources: list[SourceConfig] = Field(
        default_factory=_default_sources,
        min_length=1,
        description="Weighted data sources; default: the embedded offline corpus.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**31,
        description="Data seed: with the global sequence index it fixes every batch's content.",
    )
    shuffle_window: int = Field(
        default=65536,
        gt=0,
        description="Number of consecutive mixed sequences shuffled together (sequences).",
    )
    max_document_chars: int = Field(
        default=1_000_000,
        gt=0,
        description="Longest document kept whole (characters); a longer one is dropped or split "
        "(long_documents) and counted as too_long, so one huge file cannot become most of its "
        "source's tokens unnoticed.",
    )
    long_documents: Literal["drop", "split"] = Field(
        default="drop",
        description="drop: skip a document longer than max_document_chars; split: cut it into "
        "pieces of at most that many characters, each ended by end-of-document.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Folder for the tokenised source caches (relative to the job file); "
        "default $PALM_DATA_CACHE or ~/.cache/palm/data.",
    )
    store: str | None = Field(
        default=None,
        description="Where the prepared token store lives: a folder (relative to the job file) "
        "or a gs:// prefix, read in place by every host. Default: a folder under cache_dir "
        "named by the sources and the tokenizer. Made by `palm data prepare` (or by "
        "`palm run`, when the store is missing or stale).",
    )
    prepare: PrepareConfig = Field(
        default_factory=PrepareConfig, description="How the token store is prepared."
    )

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {duplicates}")
        return self


def resolve_path(path: str, base_dir: Path) -> str:
    """Absolute form of a job-file path: URLs and builtin names are kept as they are."""
    if path.startswith(BUILTIN_PREFIX) or "://" in path:
        return path
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else (Path(base_dir) / expanded).resolve())


# PaLM's training mixture (Chowdhery et al. 2022, arXiv 2204.02311, Table 2): proportion of
# training tokens per source. The social media, webpage and Wikipedia parts are multilingual.
PALM_MIXTURE: dict[str, float] = {
    "social_media_conversations": 0.50,
    "filtered_webpages": 0.27,
    "books": 0.13,
    "github": 0.05,
    "wikipedia": 0.04,
    "news": 0.01,
}


def palm_mixture_sources(paths: dict[str, list[str]], **source_options: str) -> list[SourceConfig]:
    """PaLM's six sources with Table 2 weights; `paths` maps each PALM_MIXTURE name to files."""
    missing = sorted(set(PALM_MIXTURE) - set(paths))
    unknown = sorted(set(paths) - set(PALM_MIXTURE))
    if missing or unknown:
        raise ValueError(
            f"palm_mixture_sources needs exactly the sources {sorted(PALM_MIXTURE)}; "
            f"missing {missing}, unknown {unknown}"
        )
    return [
        SourceConfig(name=name, paths=paths[name], weight=weight, **source_options)
        for name, weight in PALM_MIXTURE.items()
    ]
