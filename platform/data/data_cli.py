"""`palm data prepare|info`: build a job's token store on Ray, or look inside a store.

    palm data prepare jobs/local-cpu.yaml [--address A] [--workers N] [--json]
    palm data info STORE [--json]
    palm data sample JOB.yaml --step S [--process P] [--rows K]     (sample.py)

`prepare` tokenises the job's sources into `data.store` (prepare.py): committed shards are
skipped, so running it again resumes. `info` reads a store's manifest and every sidecar,
checks each shard's arrays against its sidecar, and exits 2 naming a torn or missing one.
Bad input is one line on stderr and exit 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_ERRORS = (OSError, ValueError, RuntimeError)  # StoreError, PrepareInputError, ... are these


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from palm_platform.data.prepare_ray import ADDRESS_HELP

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = sub.add_parser("prepare", help="tokenise a job's sources into its token store")
    prepare.add_argument("job", help="job YAML file (its data section)")
    prepare.add_argument("--address", default=None, help=ADDRESS_HELP)
    prepare.add_argument("--workers", type=int, default=None,
                         help="workers (one CPU each; default: every CPU of the cluster)")
    prepare.add_argument("--json", action="store_true", help="print one JSON object last")
    info = sub.add_parser("info", help="shards, counts, tokenizer and digest of a token store")
    info.add_argument("store", help="the store's folder or gs:// prefix")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    from palm_platform.data import sample

    sample.add_arguments(sub.add_parser("sample", help="decoded rows of a step's batch, as a "
                                        "process of the job reads them from the store"))


def main(args: argparse.Namespace) -> int:
    from palm_platform.data import sample

    return {"prepare": _prepare, "info": _info, "sample": sample.main}[args.action](args)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else repr(error)


def _fail(error: BaseException) -> int:
    print(f"palm data: {_first_line(error)}", file=sys.stderr)
    return 2


def _worker_lines_to_stderr() -> None:
    """With --json, stdout holds the one JSON object alone: Ray forwards the lines of the
    cluster's workers (ours, and those of no job yet, such as an XLA log line flushed late)
    to every driver's stdout or stderr, and a script reading the last stdout line would read
    one of theirs."""
    from palm_platform.cluster import auth

    auth.enable_from_environment()  # before Ray is imported (prepare_ray.connect says why)
    from palm_platform.ray.compat import route_worker_output

    route_worker_output(lambda data, ignore_prefix, ray_print:
                        ray_print({**data, "is_err": True}, ignore_prefix))


def _prepare(args: argparse.Namespace) -> int:
    from palm_platform.data import prepare, quality
    from palm_platform.job import load_job_or_exit

    if args.workers is not None and args.workers < 1:
        return _fail(ValueError(f"--workers {args.workers}: give at least 1"))
    job = load_job_or_exit(args.job)
    if args.json:
        _worker_lines_to_stderr()
    try:
        result = prepare.prepare_store(job.data, Path(args.job).parent.resolve(),
                                       address=args.address, workers=args.workers,
                                       progress=not args.json)
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
        token_store.check()
    except _ERRORS as error:
        return _fail(error)
    manifest = token_store.manifest
    sidecars = {key: s for key, s in token_store.sidecars.items() if s is not None}
    complete = manifest.complete and len(sidecars) == len(token_store.sidecars)
    info = {"store": token_store.root, "shards": len(sidecars),
            "planned": len(token_store.sidecars), "complete": manifest.complete,
            "documents": sum(s["documents"] for s in sidecars.values()),
            "tokens": sum(s["tokens"] for s in sidecars.values()),
            "tokenizer_sha256": manifest.tokenizer_sha256,
            "digest": store.digest(manifest, sidecars) if complete else None,
            "sources": {name: sum(1 for (s, _) in sidecars if s == name)
                        for name in manifest.sources}}
    if args.json:
        print(json.dumps(info))
        return 0
    state = "complete" if manifest.complete else "being prepared"
    print(f"{info['store']}: {state}, {info['shards']} of {info['planned']} shards committed, "
          f"{info['documents']:,} documents, {info['tokens']:,} tokens")
    print(f"tokenizer sha256 {info['tokenizer_sha256']}; digest {info['digest'] or '-'}")
    for name, count in info["sources"].items():
        print(f"  {name}: {count} shards")
    return 0
