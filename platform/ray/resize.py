"""A grow-back that loses nothing: when pods return, every host saves one agreed step first.

Ray 2.60's elastic policy grows a running worker group by restarting it at the new size
(`elastic_resize_monitor_interval_s`, scaling_policy/elastic.py): the restart kills the
workers wherever they are, and the group restores the newest checkpoint, so every step
trained on fewer pods since that checkpoint is computed again (7 steps of the local elastic
job, 12% of its run). A preemption notice does better: every host saves the same step and
the worker returns (checkpoint/preemption.py, ray/worker.py), and `palm run` launches the
group again (ray/run.py). So a returned pod is turned into exactly that notice:

- `GrowBackMonitor` (here, in the driver, beside `palm run`'s relaunch loop) polls the
  cluster every `topology.resize_check_s` seconds. When it counts more intact slices (up to
  `topology.pods`) than the group trains on (the `pods` of this launch's newest step record),
  on two polls in a row, it gives one notice for the launch (a removed host may be listed
  ALIVE for a while; and a confirmation 1 s later was measured too early: Ray Train's
  relaunch did not count the returned hosts yet, started on 1 pod again, and a second
  notice was needed).
- The notice is the signal the workers' notice already listens to: SIGTERM to a train
  worker process, which JAX's preemption service turns into one agreed step on every host
  (`multihost_utils.reached_preemption_sync_point`). It is delivered by a zero-CPU Ray task
  pinned to a host of the group (`notice_host`): the driver of a real pod is not on the TPU
  hosts, and a task is how Ray reaches a process on one.
- Ray Train's own resize monitor is switched off (launch.py `_scaling_config`: an infinite
  interval), so it never restarts the group before the save. The relaunch starts at the
  size the cluster holds, restores the agreed step (written on the old pod count), and
  train/recovery.py records the `resize` event with its cause ("pod returned").

A planned removal (`palm cluster remove-pod N --drain`, cluster/pods.py) sends the same
notice to the leaving pod's hosts and stops them once their workers have saved and left.
A pod lost without notice is still Ray Train's group restart from the newest checkpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from palm_platform.ray.feasibility import matches, tpu_slices
from palm_platform.ray.interrupt import newest_step_record
from palm_platform.ray.min_pods import ClusterPoller, ray_nodes
from palm_platform.topology import SliceShape

logger = logging.getLogger(__name__)

TRAIN_WORKER = "RayTrainWorker"  # Ray Train v2's worker actor class: its processes' title


def intact_pods(nodes: list[dict], shape: SliceShape) -> int:
    """How many whole slices of `shape`'s kind the cluster lists alive (at most shape.pods)."""
    views = tpu_slices(nodes, shape.accelerator_type)
    return min(shape.pods, sum(matches(view, shape) for view in views))


class GrowBackMonitor(ClusterPoller):
    """Polls while one launch of `palm run` trains; calls `notice(pods_now, pods_trained)`
    once when whole slices returned that the group does not use."""

    thread_name, what = "palm-grow-back", "grow-back monitor"

    def __init__(self, shape: SliceShape, run_dir: Path, since_unix: float,
                 notice: Callable[[int, int], None], *, poll_s: float,
                 nodes: Callable[[], list[dict]] | None = None):
        self.shape, self.run_dir, self.since_unix = shape, Path(run_dir), since_unix
        self.notice, self.poll_s = notice, poll_s
        self._nodes = nodes or ray_nodes
        self._seen_larger = 0
        self.noticed: tuple[int, int] | None = None  # (pods now, pods trained) when given
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One poll; True once the notice was given."""
        if self.noticed is not None:
            return True
        step = newest_step_record(self.run_dir)
        if step is None or step.get("time", 0.0) < self.since_unix or "pods" not in step:
            return False  # this launch has not trained yet: no agreed step to reach
        trained, now = int(step["pods"]), intact_pods(self._nodes(), self.shape)
        if now <= trained:
            self._seen_larger = 0
            return False
        self._seen_larger += 1
        if self._seen_larger < 2:  # twice in a row: not a removed host still listed ALIVE
            return False
        self.noticed = (now, trained)
        self.notice(now, trained)
        return True



def notice_group(nodes: list[dict] | None = None) -> int:
    """SIGTERM the train worker of one TPU host that has one (in slice and worker order);
    returns how many processes got it (0: no host had a train worker).

    One host's notice is enough: JAX's preemption service tells the coordination service,
    and every host reaches the same agreed step."""
    import ray
    from palm_platform.topology import SLICE_NAME_LABEL, WORKER_ID_LABEL
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    hosts = sorted((n for n in (nodes if nodes is not None else ray.nodes())
                    if n.get("Alive") and (n.get("Resources") or {}).get("TPU", 0) > 0),
                   key=lambda n: ((n.get("Labels") or {}).get(SLICE_NAME_LABEL, ""),
                                  (n.get("Labels") or {}).get(WORKER_ID_LABEL, "")))
    task = ray.remote(num_cpus=0)(_notice_this_host)
    for node in hosts:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        try:
            signalled = ray.get(task.options(scheduling_strategy=strategy).remote(), timeout=30)
        except Exception as error:  # noqa: BLE001 - a host going away: try the next
            logger.warning("could not reach host %s: %s", node["NodeID"][:8], error)
            continue
        if signalled:
            return signalled
    return 0


def signal_train_workers(processes, sig: int) -> int:
    """Send `sig` to the Ray Train worker processes among `processes` (psutil.Process)."""
    import psutil

    sent = 0
    for proc in processes:
        try:
            if TRAIN_WORKER in " ".join(proc.cmdline()):
                proc.send_signal(sig)
                sent += 1
        except psutil.Error:
            pass
    return sent


def _host_train_workers() -> list:
    """This host's Ray Train worker processes: on a TPU VM, the one train worker; on the local
    fake-TPU cluster (every host on one machine), those started by the same fake host (same
    TPU_NAME and TPU_WORKER_ID, which the raylet gives every worker it starts)."""
    import os

    import psutil

    mine = (os.environ.get("TPU_NAME"), os.environ.get("TPU_WORKER_ID"))
    found = []
    for proc in psutil.process_iter():
        try:
            if TRAIN_WORKER not in " ".join(proc.cmdline()):
                continue
            env = proc.environ()
            if (env.get("TPU_NAME"), env.get("TPU_WORKER_ID")) == mine:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _notice_this_host() -> int:
    """Runs on the host (a Ray task): SIGTERM its train worker, as GCE's notice would."""
    import signal

    return signal_train_workers(_host_train_workers(), signal.SIGTERM)
