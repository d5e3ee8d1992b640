"""Elastic pods on the local Ray cluster: lose pod 1 mid-run, give it back, measure.

    python benchmarks/bench_elastic.py [--job tests/jobs/ray-elastic.yaml] [--steps 300]
        [--degraded-steps 25] [--quick-cycles N] [--add-after-s 2] [--drain-cycle]
        [--stop-after-grow N] [--json OUT]

One run, one machine: `palm cluster up` with the job's shape (in a temporary state dir),
`palm run` of the job (its steps set by --steps), `palm cluster remove-pod 1` once the run
has trained `--warm-steps` steps on both pods, `palm cluster add-pod 1` after
`--degraded-steps` steps on one pod, then `--quick-cycles` more times `remove-pod 1` and
`add-pod 1` `--add-after-s` seconds after the removal returned (each waits for the run to
train on 2 pods again), with `--drain-cycle` a planned removal (`remove-pod 1 --drain`: the
run saves an agreed step before the hosts go) and its return, then the run to its end.
Prints tokens/s at full size, degraded and after growing back (medians of steps that did not
compile), their ratios, the seconds from pod loss to the next trained step and from pod
return to the first 2-pod step, the steps computed again at every resize (a grow-back's and
a planned shrink's goal: 0; a lost pod's: those since its newest checkpoint), and the
ledger's resize trace. Exit 1 if a phase never happens (with what was seen).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: tests.support
BIN = Path(sys.executable).parent


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return out


def _wait(run_dir: Path, proc: subprocess.Popen, what: str, predicate, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in _records(run_dir):
            if predicate(record):
                return record
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")


def _palm(*args: str) -> str:
    out = subprocess.run([str(BIN / "palm"), *args], capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(f"palm {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout.strip()


def shrink_and_grow(job_file: Path, work: Path, *, steps: int, warm_steps: int,
                    degraded_steps: int, stop_after_grow: int | None = None,
                    quick_cycles: int = 0, add_after_s: float = 2.0,
                    drain_cycle: bool = False, timeout_s: float = 600) -> dict:
    """Run the job on a fresh local cluster, remove pod 1, add it back; return the figures.

    `stop_after_grow=N`: once the regrown run has trained N steps on 2 pods, Ctrl-C it (as a
    user would) instead of waiting for its last step. How many steps a regrowth takes depends
    on how fast the machine trains one pod's steps (on a fast one, a short job could end first),
    so the test stops the run itself and the job's `steps` only needs to be out of reach.

    `quick_cycles=N`: after the first regrowth, N times: remove pod 1, add it back
    `add_after_s` seconds after the removal returned, and wait for a 2-pod step after the
    add returned (a pod must be able to come back at any time after its removal).

    `drain_cycle`: then a planned removal (`remove-pod 1 --drain`), a step on 1 pod, and
    `add-pod 1` again with a step on 2 pods after it.
    """
    spec = yaml.safe_load(job_file.read_text())
    topo = spec["topology"]
    spec["train"]["steps"] = steps
    spec["run_dir"] = str(work / "run")
    spec["checkpoint"]["directory"] = str(work / "ckpt")
    spec["train"]["compile_cache"] = str(work / "compile-cache")
    job = work / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    run_dir = work / "run" / spec["name"]
    from tests.support.local_cluster import driver_env, running_cluster

    state_dir = work / "cluster"
    with running_cluster(state_dir, pods=topo["pods"], hosts_per_pod=topo["hosts_per_pod"],
                         chips_per_host=topo["chips_per_host"]) as state:
        log = open(work / "palm-run.log", "w")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen([str(BIN / "palm"), "run", str(job)], env=driver_env(state),
                                stdout=log, stderr=subprocess.STDOUT, cwd=work)
        try:
            _wait(run_dir, proc, f"step {warm_steps} on 2 pods",
                  lambda r: r["kind"] == "step" and r["step"] >= warm_steps, timeout_s)
            lost_at = time.time()
            _palm("cluster", "remove-pod", "1", "--dir", str(state_dir))
            first_degraded = _wait(run_dir, proc, "a step on 1 pod",
                                   lambda r: r["kind"] == "step" and r.get("pods") == 1, timeout_s)
            _wait(run_dir, proc, f"{degraded_steps} steps on 1 pod",
                  lambda r: r["kind"] == "step" and r.get("pods") == 1
                  and r["step"] >= first_degraded["step"] + degraded_steps, timeout_s)
            returned_at = time.time()
            _palm("cluster", "add-pod", "1", "--dir", str(state_dir))
            regrown = _wait(run_dir, proc, "a step on 2 pods after the pod returned",
                            lambda r: r["kind"] == "step" and r.get("pods") == 2
                            and r["time"] > returned_at, timeout_s)
            cycles = [_quick_cycle(state_dir, run_dir, proc, add_after_s, timeout_s)
                      for _ in range(quick_cycles)]
            drained = (_drain_cycle(state_dir, run_dir, proc, timeout_s) if drain_cycle
                       else None)
            last_grown = (drained["regrown_step"] if drained else
                          cycles[-1]["regrown_step"] if cycles else regrown["step"])
            if stop_after_grow is not None:
                _wait(run_dir, proc, f"{stop_after_grow} steps on 2 pods after the regrowth",
                      lambda r: r["kind"] == "step" and r.get("pods") == 2
                      and r["step"] >= last_grown + stop_after_grow, timeout_s)
                proc.send_signal(signal.SIGINT)
            proc.wait(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
            log.close()
    records = _records(run_dir)
    steps_seen = [r for r in records if r["kind"] == "step" and not r.get("compiled")]

    def median_tokens(chosen: list[dict]) -> float:
        return statistics.median(r["tokens_per_s"] for r in chosen) if chosen else float("nan")

    full = [r for r in steps_seen if r["time"] < lost_at and r.get("pods") == 2]
    degraded = [r for r in steps_seen if r.get("pods") == 1]
    after = [r for r in steps_seen if r["time"] > regrown["time"] and r.get("pods") == 2]
    ledger = (
        json.loads((run_dir / "ledger.json").read_text())
        if (run_dir / "ledger.json").exists()
        else {}
    )
    return {
        "exit_code": proc.returncode,
        "quick_cycles": cycles,
        "drain_cycle": drained,
        "tokens_per_s": {"full": median_tokens(full), "degraded": median_tokens(degraded),
                         "after_grow": median_tokens(after)},
        "loss_to_next_step_s": first_degraded["time"] - lost_at,
        "return_to_two_pod_step_s": regrown["time"] - returned_at,
        "resize_events": resize_events(records),
        "ledger": ledger.get("events", []),
        # the step the run ended on: not the highest step logged, which a restart from an
        # older checkpoint (a pod lost again) may have logged before replaying it
        "last_step": next((r["step"] for r in reversed(records) if r["kind"] == "step"), 0),
        "goodput": next((r for r in reversed(records) if r["kind"] == "goodput"), {}),
        "run_dir": str(run_dir),
        "log": str(work / "palm-run.log"),
    }


def resize_events(records: list[dict]) -> list[dict]:
    """Each `resize` record with `recomputed_steps`: the newest step trained before it minus
    the step the resized group restored (the steps it computes again)."""
    out, newest = [], None
    for r in records:
        if r["kind"] == "step":
            newest = r["step"]
        elif r["kind"] == "resize":
            event = {k: r[k] for k in ("step", "from_pods", "to_pods", "cause", "time")}
            event["recomputed_steps"] = max(0, (newest or 0) - r["step"])
            out.append(event)
    return out


def _drain_cycle(state_dir: Path, run_dir: Path, proc: subprocess.Popen,
                 timeout_s: float) -> dict:
    """remove-pod 1 --drain, a 1-pod step after it, add-pod 1, a 2-pod step after that."""
    started = time.time()
    said = _palm("cluster", "remove-pod", "1", "--drain", "--dir", str(state_dir))
    removed = time.time()
    shrunk = _wait(run_dir, proc, "a step on 1 pod after a planned removal",
                   lambda r: r["kind"] == "step" and r.get("pods") == 1 and r["time"] > started,
                   timeout_s)
    added_at = time.time()
    _palm("cluster", "add-pod", "1", "--dir", str(state_dir))
    regrown = _wait(run_dir, proc, "a step on 2 pods after the drained pod returned",
                    lambda r: r["kind"] == "step" and r.get("pods") == 2 and r["time"] > added_at,
                    timeout_s)
    return {"remove_pod": said, "drain_s": removed - started, "started": started,
            "shrunk_step": shrunk["step"], "notice_to_one_pod_step_s": shrunk["time"] - started,
            "returned": added_at, "regrown_step": regrown["step"],
            "return_to_two_pod_step_s": regrown["time"] - added_at}


def _quick_cycle(state_dir: Path, run_dir: Path, proc: subprocess.Popen, add_after_s: float,
                 timeout_s: float) -> dict:
    """remove-pod 1, add-pod 1 `add_after_s` s after the removal returned, a 2-pod step."""
    _palm("cluster", "remove-pod", "1", "--dir", str(state_dir))
    removed = time.time()
    time.sleep(add_after_s)
    started = time.time()
    _palm("cluster", "add-pod", "1", "--dir", str(state_dir))  # raises if the pod failed
    added = time.time()
    regrown = _wait(run_dir, proc, "a step on 2 pods after a quick remove/add",
                    lambda r: r["kind"] == "step" and r.get("pods") == 2 and r["time"] > added,
                    timeout_s)
    return {"add_started_after_remove_s": started - removed, "add_s": added - started,
            "regrown_step": regrown["step"], "add_to_two_pod_step_s": regrown["time"] - added}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "tests" / "jobs" / "ray-elastic.yaml"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warm-steps", type=int, default=20)
    parser.add_argument("--degraded-steps", type=int, default=25)
    parser.add_argument("--stop-after-grow", type=int, default=None, metavar="N",
                        help="Ctrl-C the run N steps after it grew back (exit 130 expected)")
    parser.add_argument("--quick-cycles", type=int, default=0, metavar="N",
                        help="after the first regrowth, N more remove/add cycles, each add "
                             "--add-after-s seconds after the removal returned")
    parser.add_argument("--add-after-s", type=float, default=2.0)
    parser.add_argument("--drain-cycle", action="store_true",
                        help="then a planned removal (remove-pod 1 --drain) and its return")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="palm-bench-elastic-"))
    try:
        figures = shrink_and_grow(Path(args.job), work, steps=args.steps,
                                  warm_steps=args.warm_steps, degraded_steps=args.degraded_steps,
                                  stop_after_grow=args.stop_after_grow,
                                  quick_cycles=args.quick_cycles, add_after_s=args.add_after_s,
                                  drain_cycle=args.drain_cycle)
    except (RuntimeError, TimeoutError) as error:
        print(f"bench_elastic: {error}; run log in {work / 'palm-run.log'}", file=sys.stderr)
        return 1
    finally:
        if args.json is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    tps = figures["tokens_per_s"]
    print(f"tokens/s: full {tps['full']:,.0f}  degraded {tps['degraded']:,.0f}  after grow "
          f"{tps['after_grow']:,.0f}")
    print(f"ratios: degraded/full {tps['degraded'] / tps['full']:.2f}  after-grow/full "
          f"{tps['after_grow'] / tps['full']:.2f}")
    print(f"pod loss -> next trained step: {figures['loss_to_next_step_s']:.1f} s")
    print(f"pod return -> first 2-pod step: {figures['return_to_two_pod_step_s']:.1f} s")
    for i, cycle in enumerate(figures["quick_cycles"], 1):
        print(f"quick cycle {i}: add-pod started {cycle['add_started_after_remove_s']:.1f} s "
              f"after remove-pod returned, took {cycle['add_s']:.1f} s; first 2-pod step "
              f"{cycle['regrown_step']} {cycle['add_to_two_pod_step_s']:.1f} s after it")
    drained = figures["drain_cycle"]
    if drained:
        print(f"planned removal: {drained['remove_pod']}; notice -> first 1-pod step "
              f"{drained['notice_to_one_pod_step_s']:.1f} s; its return -> first 2-pod step "
              f"{drained['return_to_two_pod_step_s']:.1f} s")
    for event in figures["resize_events"]:
        planned = drained is not None and event["time"] > drained["started"] and (
            event["to_pods"] < event["from_pods"] and event["time"] < drained["returned"])
        kind = ("grow-back" if event["to_pods"] > event["from_pods"] else
                "planned shrink" if planned else "lost pod")
        print(f"{kind} at step {event['step']} ({event['from_pods']} -> {event['to_pods']} "
              f"pods, {event['cause']}): {event['recomputed_steps']} steps recomputed")
    print(f"run: exit {figures['exit_code']}, last step {figures['last_step']}")
    for event in figures["ledger"]:
        print("ledger: " + json.dumps(event))
    badput = {k: round(v, 1) for k, v in figures["goodput"].items() if k.startswith("badput_")}
    print(f"goodput {figures['goodput'].get('goodput', float('nan')):.1%}, badput s: {badput}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0 if figures["exit_code"] == (0 if args.stop_after_grow is None else 130) else 1


if __name__ == "__main__":
    sys.exit(main())
