"""How a live `palm profile` request reaches a running train loop, and how the loop answers.

Host 0 of the run writes `RUN/profile/listening.json` when its loop starts (and removes it when
the loop ends): which channel it reads, and how many hosts the run has. The channel is Ray's
GCS key-value store when the loop runs in a Ray worker (`palm run` on the local cluster or on
TPU pods, `ray job submit`): the same store `palm run`'s Ctrl-C uses (ray/interrupt.py), which
every host and any driver of the cluster can reach, whereas the run folder lives on host 0
only. A one-process run (`palm run --direct`) reads a file in the run folder instead.

    palm profile  --request-->  channel  --host 0 reads every poll_every steps-->  broadcast
    palm profile  <--answer---  channel  <--host 0: agreed (first step, hosts), then done

Only host 0 reads the channel, at the job's `profile.poll_every` cadence; the other hosts learn
the request from its broadcast (capture.py), so no host reads anything on other steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from palm_platform.atomic_write import write_atomic

KV_NAMESPACE = "palm"


def profile_folder(run_dir: Path) -> Path:
    """RUN/profile: the listening file, the request files, one folder per capture."""
    return Path(run_dir) / "profile"


def capture_folder(run_dir: Path, first_step: int) -> Path:
    return profile_folder(run_dir) / f"step-{first_step}"


def host_folder(run_dir: Path, first_step: int, host: int) -> Path:
    """One host's trace (TensorBoard's profile plugin reads each host folder as a run)."""
    return capture_folder(run_dir, first_step) / f"host-{host}"


def listening_path(run_dir: Path) -> Path:
    return profile_folder(run_dir) / "listening.json"


class FileChannel:
    """A request and its answer as two files in the run folder (one-process runs)."""

    kind = "file"

    def __init__(self, run_dir: Path):
        self.folder = profile_folder(run_dir)

    def _read(self, name: str) -> dict | None:
        try:
            return json.loads((self.folder / name).read_text())
        except (OSError, ValueError):
            return None

    def _write(self, name: str, value: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / name, json.dumps(value))

    def request(self) -> dict | None:
        return self._read("request.json")

    def post(self, request: dict) -> None:
        self._write("request.json", request)

    def answer(self) -> dict | None:
        return self._read("answer.json")

    def reply(self, answer: dict) -> None:
        self._write("answer.json", answer)

    def clear(self) -> None:
        (self.folder / "request.json").unlink(missing_ok=True)


class KvChannel:
    """The same through Ray's GCS key-value store, under `key` (unique to one loop start)."""

    kind = "kv"

    def __init__(self, key: str):
        self.key = key

    def _get(self, name: str) -> dict | None:
        from palm_platform.compat.ray import kv_get

        value = kv_get(f"{self.key}/{name}", KV_NAMESPACE)
        return json.loads(value) if value else None

    def _put(self, name: str, value: dict) -> None:
        from palm_platform.compat.ray import kv_put

        kv_put(f"{self.key}/{name}", json.dumps(value).encode(), KV_NAMESPACE)

    def request(self) -> dict | None:
        return self._get("request")

    def post(self, request: dict) -> None:
        self._put("request", request)

    def answer(self) -> dict | None:
        return self._get("answer")

    def reply(self, answer: dict) -> None:
        self._put("answer", answer)

    def clear(self) -> None:
        from palm_platform.compat.ray import kv_delete

        kv_delete(f"{self.key}/request", KV_NAMESPACE)

    def listening(self) -> bool:
        """Whether the loop that wrote listening.json still runs (it deletes the key at its end;
        a killed job group leaves it, and its worker restart writes a new key)."""
        return self._get("listening") is not None

    def mark_listening(self, listening: bool) -> None:
        from palm_platform.compat.ray import kv_delete

        if listening:
            self._put("listening", {"pid": os.getpid()})
        else:
            kv_delete(f"{self.key}/listening", KV_NAMESPACE)


def channel_for_this_process(run_dir: Path, job_name: str) -> FileChannel | KvChannel:
    """The GCS store inside a Ray worker (Ray already imported and connected), else a file."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            import time

            return KvChannel(f"profile/{job_name}/{time.time():.6f}")
    return FileChannel(run_dir)


def write_listening(run_dir: Path, channel: FileChannel | KvChannel, hosts: int,
                    poll_every: int) -> None:
    record = {"channel": channel.kind, "hosts": hosts, "poll_every": poll_every,
              "pid": os.getpid()}
    if isinstance(channel, KvChannel):
        import ray

        record.update(key=channel.key, gcs_address=ray.get_runtime_context().gcs_address)
        channel.mark_listening(True)
    path = listening_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record))


def remove_listening(run_dir: Path, channel: FileChannel | KvChannel) -> None:
    listening_path(run_dir).unlink(missing_ok=True)
    try:  # a run that was never profiled keeps no empty profile/ folder
        profile_folder(run_dir).rmdir()
    except OSError:
        pass
    if isinstance(channel, KvChannel):
        try:
            channel.mark_listening(False)
        except Exception:  # noqa: BLE001 - the cluster may be going away with the job
            pass


def read_listening(run_dir: Path) -> dict | None:
    try:
        return json.loads(listening_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
