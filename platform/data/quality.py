"""The data's bad records, reported once per run: a metrics event, the summary, `palm status`.

Readers count and log bad records while a source is tokenised (readers.py), but those logs
live on whichever worker built the cache. This turns the pipeline's counts into one
`data_quality` event in metrics.jsonl (written by process 0), which the end-of-run summary
and `palm status` print as one line.
"""

from __future__ import annotations

EVENT = "data_quality"


def quality_event(pipeline_stats: dict) -> dict:
    """Fields of the event: total bad records, counts per source and kind, first locations."""
    per_source = {
        name: {kind: n for kind, n in s.get("bad", {}).items() if n}
        for name, s in pipeline_stats["sources"].items()
    }
    return {
        "bad_records": int(pipeline_stats["bad_records"]),
        "documents": int(sum(s.get("documents", 0) for s in pipeline_stats["sources"].values())),
        "bad_by_source": {name: kinds for name, kinds in per_source.items() if kinds},
        "first_bad": list(pipeline_stats.get("first_bad", [])),
    }


def report_data_quality(setup) -> None:
    """Write the event for a run's pipeline (`TrainSetup`; a no-op on processes other than 0)."""
    setup.sink.event(EVENT, 0, **quality_event(setup.pipeline.stats()))


def describe(event: dict) -> str:
    """One line for the summary: `data: 3 bad records of 1,204 documents (docs: bad_json 2,
    too_long 1); first: a.jsonl:7 bad_json, ...`."""
    if not event.get("bad_records"):
        return f"data: {event.get('documents', 0):,} documents, no bad records"
    kinds = "; ".join(f"{name}: " + ", ".join(f"{k} {n}" for k, n in counts.items())
                      for name, counts in event.get("bad_by_source", {}).items())
    first = ", ".join(event.get("first_bad", [])[:3])
    return (f"data: {event['bad_records']:,} bad records of {event.get('documents', 0):,} "
            f"documents ({kinds}); first: {first}")
