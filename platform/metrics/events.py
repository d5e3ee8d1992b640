"""One sentence per run event: the one renderer for the log line (sink.py), the W&B
alert (wandb/sink.py), `palm status` and the live view (status.py).

Events are the records of metrics.jsonl: {"kind", "step", "time", **fields}. A new event kind
needs nothing here (its fields are listed, numbers rounded) unless it deserves a sentence.
"""

from __future__ import annotations


def describe_event(r: dict) -> str:
    """One sentence for an event record, numbers rounded."""
    kind, at = r["kind"], f"step {r['step']}: "
    if kind == "spike":
        return at + f"loss spike ({r.get('description') or _num(r.get('loss'))})"
    if kind == "rollback":
        note = f" ({r['note']})" if r.get("note") else ""
        return at + f"rolled back to the checkpoint of step {r.get('to_step')}{note}"
    if kind == "skip":
        return at + (f"skipped {r.get('batches')} batches (global sequences "
                     f"{r.get('first_sequence')} to {r.get('end_sequence')})")
    if kind == "stop":
        return at + f"stopped: {r.get('reason')}"
    if kind == "resize":
        return at + (f"resized from {r.get('from_pods')} to {r.get('to_pods')} pod(s) "
                     f"({r.get('cause')})")
    if kind == "preempt":
        return at + "preemption notice (SIGTERM): every host saved this step; restarting"
    if kind == "restart":
        return at + f"worker group restarted (attempt {r.get('attempt')}), resumed from this step"
    if kind == "compiled":
        cache = ""
        if "cache_hits" in r:
            cache = f"; compilation cache: {r['cache_hits']} hits, {r['cache_misses']} misses"
        return at + (f"compiled the step for batch {r.get('batch_size')} in "
                     f"{_num(r.get('seconds'))} s{cache}")
    if kind == "goodput":
        causes = sorted(((k[len("badput_"):-2], v) for k, v in r.items()
                         if k.startswith("badput_") and k.endswith("_s") and v),
                        key=lambda kv: -kv[1])
        badput = "; badput " + ", ".join(f"{k} {v:.1f} s" for k, v in causes) if causes else ""
        cache = (f"; compilation cache {r['cache_hits']} hits, {r['cache_misses']} misses"
                 if "cache_hits" in r else "")
        return at + (f"goodput {100 * r.get('goodput', 0.0):.1f}% "
                     f"({r.get('productive_s', 0.0):.1f} s "
                     f"productive of {r.get('wall_s', 0.0):.1f} s){badput}{cache}")
    if kind == "data_quality":
        from palm_platform.data.quality import describe

        return at + describe(r)
    if kind == "start":
        where = f"{r.get('hosts')} host(s), {r.get('pods')} pod(s), {r.get('devices')} devices"
        exchange = (f"; the cross-pod gradient exchange moves "
                    f"{format_bytes(r['cross_pod_bytes_per_step'])} "
                    "per step" if r.get("cross_pod_bytes_per_step") else "")
        return at + f"launched (attempt {r.get('attempt')}) on {where}{exchange}"
    if kind == "checkpoint_restored":
        return at + f"restored the checkpoint (attempt {r.get('attempt')}){_tier_read(r)}"
    if kind == "startup":
        spans = [f"{_STARTUP_SPANS.get(k[:-2], k[:-2].replace('_', ' '))} {v:.1f} s"
                 for k, v in r.items() if k.endswith("_s") and isinstance(v, int | float)]
        return at + f"started (attempt {r.get('attempt')}): " + ", ".join(spans)
    if kind == "checkpoint_saved":
        blocked = f" (the loop waited {r['blocked_s']:.2f} s)" if "blocked_s" in r else ""
        where = " in RAM" if r.get("tier") == "local" else ""
        return at + f"checkpoint saved{where}{blocked}"
    fields = ", ".join(f"{k} {_num(v)}" for k, v in r.items()
                       if k not in ("kind", "time", "step", "alert") and v not in ("", None))
    return at + kind.replace("_", " ") + (f": {fields}" if fields else "")


def _tier_read(r: dict) -> str:
    """`: from the RAM of other hosts, 12.3 MB ...`: where a restore read (issue 31's tiers)."""
    tier = r.get("tier")
    if tier is None:  # a record from before the RAM tier
        return ""
    where = {"local": "from this host's RAM", "peer": "from the RAM of other hosts",
             "persistent": "from persistent storage"}.get(tier, tier)
    sizes = ", ".join(f"{name} {r.get(f'bytes_{name}', 0) / 1e6:.1f} MB"
                      for name in ("local", "peer", "persistent"))
    why = f": {r['why_not_ram']}" if r.get("why_not_ram") else ""  # a newer RAM step passed over
    return f" {where} ({sizes}){why}"


# The spans of a `startup` event (train/loop.py's Trainer): seconds from the previous mark.
_STARTUP_SPANS = {"worker_setup": "Ray worker start", "jax_imported": "JAX import",
                  "jax_init_started": "Ray Train set-up",
                  "jax_initialized": "jax.distributed init",
                  "train_fn_entered": "process to train function", "imported": "imports",
                  "trainer_init": "set-up", "trainer_ready": "trainer built",
                  "restored": "restore or init"}


def format_bytes(n: float) -> str:
    """2426368 -> '2.43 MB' (decimal units; `palm plan` and the events say bytes alike)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _num(value) -> str:
    """Floats to 4 significant digits; everything else as it is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def eval_text(record: dict) -> str:
    """`code loss 5.12 bpb 1.83, docs ...` from an `eval` record's eval/<source>/<metric>."""
    per_source: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        if key.startswith("eval/"):
            _, source, metric = key.split("/", 2)
            per_source.setdefault(source, {})[metric] = value
    return ", ".join(f"{source} loss {m.get('loss', float('nan')):.3f} "
                     f"bpb {m.get('bpb', float('nan')):.3f}"
                     for source, m in per_source.items())
