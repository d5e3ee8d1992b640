"""Read an offline W&B run back from its `.wandb` file: history rows, alerts, summary.

This is what `wandb sync` would upload, so it is the check that nothing was dropped before
a run ever reaches a server. wandb 0.31 ships no Python reader of its own (the old
`wandb.sdk.internal.datastore` is gone; its Go core writes the file), so this reads the
format by hand: a 7-byte header (":W&B", 0xBEE1, version 0), then LevelDB-log records
(32 KiB blocks; each chunk has a 7-byte header: CRC32C, length, type FULL/FIRST/MIDDLE/LAST)
whose payloads are `wandb_internal_pb2.Record` protobufs, parsed with wandb's own classes.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class NotAWandbFile(ValueError):
    pass


def raw_records(path: Path) -> Iterator[bytes]:
    """The payloads of a .wandb transaction log, reassembled from their chunks."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B" or data[4:6] != b"\xe1\xbe":
        raise NotAWandbFile(f"{path}: not a W&B transaction log (bad header)")
    position, pending = CHUNK_HEADER, b""
    while position + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < CHUNK_HEADER:  # the writer pads a block's tail with zeros
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + CHUNK_HEADER])
        if kind == 0 and length == 0:
            position += left_in_block
            continue
        if position + CHUNK_HEADER + length > len(data):
            return  # a torn tail: the writing process was killed mid-record
        chunk = data[position + CHUNK_HEADER:position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


@dataclass
class OfflineRun:
    run_id: str
    history: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, str]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # define_metric, by name or glob
    output: str = ""  # what W&B printed (its warnings included, when it captured the console)
    finished: bool = False  # the exit record is there (run.finish() ran and was written)
    resume_from: str = ""
    fork_from: str = ""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> OfflineRun:
    """One `.wandb` file as rows and alerts (later summary updates win, as on the server)."""
    from google.protobuf.json_format import MessageToDict
    from wandb.proto import wandb_internal_pb2

    run = OfflineRun(run_id="")
    for payload in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
            if record.run.HasField("branch_point"):
                point = record.run.branch_point
                moment = f"{point.run}?{point.metric}={point.value:g}"
                if point.run != record.run.run_id:  # a fork names its parent
                    run.fork_from = moment
                else:
                    run.resume_from = moment
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "alert":
            run.alerts.append({"title": record.alert.title, "text": record.alert.text,
                               "level": record.alert.level})
        elif kind == "metric":
            name = record.metric.name or record.metric.glob_name
            run.metrics[name] = MessageToDict(record.metric)
        elif kind in ("output", "output_raw"):
            run.output += getattr(record, kind).line
        elif kind == "exit":
            run.finished = True
    return run


def run_files(run_dir: Path) -> list[Path]:
    """The .wandb files of a job's run folder, one per process start, oldest first."""
    return sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"))


def read_job_runs(run_dir: Path, wait_s: float = 0.0) -> list[OfflineRun]:
    """Every W&B segment of a job. `run.finish()` returns before wandb-core has written an
    offline file (seen with wandb 0.31: the file held only its header right after), so a
    reader that follows a finish waits up to `wait_s` for each file's exit record; a
    segment whose process was killed never gets one and is read as it is."""
    deadline = time.monotonic() + wait_s
    runs = []
    for path in run_files(run_dir):
        run = read_run(path)
        while not run.finished and time.monotonic() < deadline:
            time.sleep(0.2)
            run = read_run(path)
        runs.append(run)
    return runs
