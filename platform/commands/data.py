"""`palm data prepare|info|sample|gc`: build a job's token store on Ray, look inside a store.

    palm data prepare jobs/local-cpu.yaml [--address A] [--workers N] [--json]
    palm data info STORE [--deep] [--json]
    palm data sample JOB.yaml --step S [--process P] [--rows K]     (data_sample.py)
    palm data gc STORE [--dry-run]

`prepare` tokenises the job's sources into `data.store` (data/prepare.py): committed shards
are skipped, so running it again resumes, and a damaged shard is written again. `info`
checks every shard's files against its sidecar from one listing of the store (no data
read); `--deep` also reads every shard and compares its sha256. `gc` removes the shards no
manifest lists. Bad input is one line on stderr and exit 2, with nothing written; Ctrl-C
during a prepare stops its workers and exits 130 with the command that resumes.

Here, above the layers it composes: the job file (job/), the palm cluster's address and
token (cluster/), the run's ledger (supervise/, for sample); data/ imports none of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_ERRORS = (OSError, ValueError, RuntimeError)  # StoreError, PrepareInputError, ... are these
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
ADDRESS_HELP = ("the Ray cluster to prepare on (default: RAY_ADDRESS, else the local cluster "
                "of `palm cluster up`, else a local Ray instance on this machine)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = sub.add_parser("prepare", help="tokenise a job's sources into its token store")
    prepare.add_argument("job", help="job YAML file (its data section)")
    prepare.add_argument("--address", default=None, help=ADDRESS_HELP)
    prepare.add_argument("--workers", type=int, default=None,
                         help="workers (one CPU each; default: every CPU of the cluster)")
    prepare.add_argument("--json", action="store_true", help="print one JSON object last")
    info = sub.add_parser("info", help="shards, counts, tokenizer and digest of a token store; "
                          "every shard's files checked against its sidecar")
    info.add_argument("store", help="the store's folder or gs:// prefix")
    info.add_argument("--deep", action="store_true",
                      help="also read every shard and compare its sha256 with its sidecar's")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    gc = sub.add_parser("gc", help="remove the shards no manifest lists (left by edited inputs)")
    gc.add_argument("store", help="the store's folder or gs:// prefix")
    gc.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    from palm_platform.commands import data_sample

    data_sample.add_arguments(sub.add_parser("sample", help="decoded rows of a step's batch, "
                                             "as a process of the job reads them from the store"))


def main(args: argparse.Namespace) -> int:
    from palm_platform.commands import data_sample

    return {"prepare": _prepare, "info": _info, "gc": _gc,
            "sample": data_sample.main}[args.action](args)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else repr(error)


def _fail(error: BaseException) -> int:
    print(f"palm data: {_first_line(error)}", file=sys.stderr)
    return 2


def _worker_lines_to_stderr() -> None:
    """With --json, stdout holds the one JSON object alone: Ray forwards the lines of the
    cluster's workers (ours, and those of no job yet, such as an XLA log line flushed late)
    to every driver's stdout or stderr, and a script reading the last stdout line would read
    one of theirs. (Ray's printer is replaced through its door, compat/ray.py.)"""
    from palm_platform.compat.ray import route_worker_output

    route_worker_output(lambda data, ignore_prefix, ray_print:
                        ray_print({**data, "is_err": True}, ignore_prefix))


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster a prepare runs on: `address`, RAY_ADDRESS, `palm cluster`'s, else
    None (a local Ray instance). Turns on token auth when a token is at hand (cluster/auth.py):
    before Ray is imported, since Ray reads the mode into its config once."""
    from palm_platform.cluster import auth

    auth.enable_from_environment()
    from palm_platform.cluster.nodes import ray_address_from_state

    return address or os.environ.get("RAY_ADDRESS") or ray_address_from_state()


def _prepare(args: argparse.Namespace) -> int:
    from palm_platform.data import prepare, quality
    from palm_platform.job import load_job_or_exit

    if args.workers is not None and args.workers < 1:
        return _fail(ValueError(f"--workers {args.workers}: give at least 1"))
    job = load_job_or_exit(args.job)
    address = cluster_address(args.address)
    if args.json:
        _worker_lines_to_stderr()
    try:
        result = prepare.prepare_store(job.data, Path(args.job).parent.resolve(),
                                       address=address, workers=args.workers,
                                       progress=not args.json)
    except prepare.PrepareInterrupted as stopped:
        command = " ".join(["palm", "data", "prepare", args.job] +
                           (["--address", args.address] if args.address else []))
        print(f"palm data: {stopped.message(command)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before any worker started: nothing written yet
        print(f"palm data: stopped before any shard was written. Resume: `palm data prepare "
              f"{args.job}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _ERRORS as error:
        return _fail(error)
    bad = sum(n for s in result.stats.values() for n in s["bad"].values())
    event = {"bad_records": bad,
             "documents": sum(s["documents"] for s in result.stats.values()),
             "bad_by_source": {name: {k: n for k, n in s["bad"].items() if n}
                               for name, s in result.stats.items() if any(s["bad"].values())},
             "first_bad": [loc for s in result.stats.values() for loc in s["first_bad"]]}
    summary = {"shards": result.shards, "written": result.written, "skipped": result.skipped,
               "documents": result.documents, "tokens": result.tokens,
               "tokens_per_s": round(result.tokens_per_s, 1), "digest": result.digest}
    print(quality.describe(event), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"store": result.root, **summary}))
    else:
        print(f"{result.root}: {result.shards} shards ({result.written} written, "
              f"{result.skipped} already committed), {result.documents:,} documents, "
              f"{result.tokens:,} tokens, {result.tokens_per_s:,.0f} tokens/s; "
              f"digest {result.digest}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from palm_platform.data import store

    try:
        token_store = store.TokenStore.open(args.store)
        token_store.check(deep=args.deep)
    except _ERRORS as error:
        return _fail(error)
    manifest = token_store.manifest
    if manifest.self_contained and not args.deep:  # no sidecar read: the manifest has it all
        entries = {(s, e.name): {"tokens": e.tokens, "documents": e.documents}
                   for s in manifest.sources for e in manifest.shards(s)}
        planned, digest = len(entries), manifest.digest
    else:
        entries = {key: s for key, s in token_store.sidecars.items() if s is not None}
        planned = len(token_store.sidecars)
        complete = manifest.complete and len(entries) == planned
        digest = store.digest(manifest, entries) if complete else None
    info = {"store": token_store.root, "shards": len(entries),
            "planned": planned, "complete": manifest.complete,
            "checked": "deep" if args.deep else "sizes",
            "documents": sum(s["documents"] for s in entries.values()),
            "tokens": sum(s["tokens"] for s in entries.values()),
            "tokenizer_sha256": manifest.tokenizer_sha256,
            "digest": digest,
            "sources": {name: sum(1 for (s, _) in entries if s == name)
                        for name in manifest.sources}}
    if args.json:
        print(json.dumps(info))
        return 0
    state = "complete" if manifest.complete else "being prepared"
    checked = ("every shard's tokens read and matching its sha256" if args.deep else
               "every shard's files the sizes its sidecar records")
    print(f"{info['store']}: {state}, {info['shards']} of {info['planned']} shards committed, "
          f"{info['documents']:,} documents, {info['tokens']:,} tokens; {checked}")
    print(f"tokenizer sha256 {info['tokenizer_sha256']}; digest {info['digest'] or '-'}")
    for name, count in info["sources"].items():
        print(f"  {name}: {count} shards")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from palm_platform.data import store_gc

    try:
        if args.dry_run:
            orphans, _ = store_gc.find_orphans(args.store.rstrip("/"))
        else:
            orphans = store_gc.remove_orphans(args.store.rstrip("/"))
    except _ERRORS as error:
        return _fail(error)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{orphans.root}: {verb} {len(orphans.shards)} shard(s) no manifest lists "
          f"({orphans.files} files, {orphans.bytes / 1e6:.1f} MB)")
    for shard in orphans.shards[:20]:
        print(f"  {shard}")
    if len(orphans.shards) > 20:
        print(f"  ... and {len(orphans.shards) - 20} more")
    return 0
