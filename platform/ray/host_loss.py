"""One line for a run that lost a host after it had started training.

When a TPU host dies mid-run, Ray Train restarts the worker group; if the cluster no longer
has the slices, the restart's placement fails and Ray Train gives up with a controller
error, which launch.py turns into InfeasibleTopologyError. Before this module `palm run`
printed that as "cannot start", which is wrong once steps have been trained: the operator
needs to know how far the run got, which host went away, and that re-running resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from palm_platform.run_dir import RunDir
from palm_platform.topology import SLICE_NAME_LABEL, WORKER_ID_LABEL


def trained_steps_since(run_dir: Path, launched_at: float) -> int | None:
    """The newest step this launch logged (records stamped after `launched_at`), or None."""
    path = RunDir(Path(run_dir)).metrics
    if not path.exists():
        return None
    newest = None
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "step" and record.get("time", 0) >= launched_at:
            newest = record["step"]
    return newest


def lost_tpu_hosts(nodes: list[dict]) -> list[str]:
    """TPU hosts Ray lists as dead (`ray.nodes()`), as `slice/wN (ip)`."""
    lost = []
    for node in nodes:
        labels = node.get("Labels") or {}
        if node.get("Alive") or SLICE_NAME_LABEL not in labels:
            continue
        lost.append(f"{labels[SLICE_NAME_LABEL]}/w{labels.get(WORKER_ID_LABEL, '?')} "
                    f"({node.get('NodeManagerAddress', '?')})")
    return sorted(set(lost))


def host_loss_message(job_name: str, step: int, lost: list[str], reason: str) -> str:
    from palm_platform.yaml_safe import one_line

    hosts = ", ".join(lost) if lost else "a TPU host (Ray no longer lists it)"
    return one_line(
        f"{job_name}: trained to step {step}, then lost {hosts}; the worker group could not "
        f"be placed again ({reason}). Re-run the same command to resume from the newest "
        "checkpoint once the cluster has the hosts again", 600)
