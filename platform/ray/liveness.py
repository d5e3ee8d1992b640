"""Which host of a worker group is stuck: a liveness stamp per host in Ray's GCS store.

When one host stops (SIGSTOP, a stuck kernel, a swapped-out VM), its peers block in the
next collective and their watchdogs fire; but a peer cannot tell *which* host stopped. Each
worker therefore stamps `(step, time)` under its own key every few seconds from a daemon
thread; a stopped process stops stamping with all its threads. When a watchdog fires, the
hosts whose stamp is older than a few periods are the stuck ones, and the message can name
them and their step. The stamps live in the GCS key-value store (see interrupt.py for why
not in a file), keyed by launch, so a new launch never reads an old one.
"""

from __future__ import annotations

import json
import os
import threading
import time

from palm_platform.ray.interrupt import KV_NAMESPACE

PERIOD_S = 2.0
STALE_AFTER_PERIODS = 5


def host_name() -> str:
    """`pod-1/w0 (pid 123)` on a TPU host (TPU_NAME/TPU_WORKER_ID), else the machine name."""
    import socket

    slice_name, worker = os.environ.get("TPU_NAME"), os.environ.get("TPU_WORKER_ID")
    where = f"{slice_name}/w{worker}" if slice_name else socket.gethostname()
    return f"{where} (pid {os.getpid()})"


class LivenessBoard:
    def __init__(self, prefix: str, process_index: int, process_count: int):
        self.prefix, self.index, self.count = prefix, process_index, process_count
        self.step = 0
        self._stop = threading.Event()
        self._name = host_name()
        self._thread = threading.Thread(target=self._stamp_forever, name="palm-liveness",
                                        daemon=True)

    def _key(self, index: int) -> str:
        return f"{self.prefix}/{index}"

    def start(self) -> LivenessBoard:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _stamp_forever(self) -> None:
        from palm_platform.compat.ray import kv_put

        while True:
            value = json.dumps({"step": self.step, "time": time.time(), "name": self._name})
            try:
                kv_put(self._key(self.index), value.encode(), KV_NAMESPACE)
            except Exception:  # noqa: BLE001 - the GCS may be briefly away; try again
                pass
            if self._stop.wait(PERIOD_S):
                return

    def stuck_hosts(self) -> list[str]:
        """`host 3 pod-1/w1 (pid 9) at step 12, silent 41 s` for every stale peer."""
        from palm_platform.compat.ray import kv_get

        now, stuck = time.time(), []
        for index in range(self.count):
            raw = kv_get(self._key(index), KV_NAMESPACE)
            if raw is None:
                stuck.append(f"host {index} (never reported)")
                continue
            stamp = json.loads(raw)
            silent = now - stamp["time"]
            if silent > PERIOD_S * STALE_AFTER_PERIODS:
                stuck.append(f"host {index} {stamp['name']} at step {stamp['step']}, "
                             f"silent {silent:.0f} s")
        return stuck
