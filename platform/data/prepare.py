"""`palm data prepare`: tokenise a job's sources into its token store (store.py) on Ray.

INTERFACE STUB (coordinator): the signatures below are the contract between the prepare job
and the read path; the bodies are being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from palm_platform.data.config import DataConfig


@dataclass(frozen=True)
class StoreStatus:
    """What a job's store is, cheaply found (a listing of the inputs and one manifest read)."""

    state: Literal["current", "missing", "incomplete", "stale"]
    root: str
    reason: str  # one line for operators: why it is not current, naming the source


@dataclass(frozen=True)
class PrepareResult:
    root: str
    shards: int
    written: int
    skipped: int
    documents: int
    tokens: int
    tokens_per_s: float
    digest: str


def store_root(data_config: DataConfig, base_dir: Path) -> str:
    """The job's store: data.store resolved against the job folder, else a folder under the
    data cache dir named by a hash of the resolved sources and the tokenizer's sha256."""
    raise NotImplementedError


def store_status(data_config: DataConfig, base_dir: Path) -> StoreStatus:
    raise NotImplementedError


def prepare_store(data_config: DataConfig, base_dir: Path, *, address: str | None = None,
                  workers: int | None = None, in_process: bool = False,
                  progress: bool = True) -> PrepareResult:
    """Tokenise every source's missing shards; on the Ray cluster at `address` (or
    RAY_ADDRESS, palm cluster's, else a local Ray instance), or in this process when
    `in_process` (tests and small embedded corpora in library calls)."""
    raise NotImplementedError
