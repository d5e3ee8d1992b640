"""`palm run`'s data step: prepare the job's token store on the cluster when it is not current.

    store_status(job.data)        cheap: an input listing and one manifest read, here on the
                                  driver only (the one place a store's state is decided;
                                  training processes open its manifest and nothing else)
      current                     -> its shards' files against the manifest's sizes (one
                                     listing, no data read): whole -> train (inputs gone or
                                     unreadable but the store complete: one line says so,
                                     and the store is used as it is); a torn or missing
                                     shard -> prepare, which rewrites that shard only
      missing | stale             -> prepare_store(address=<the cluster>) on its CPUs
                                     (committed shards are never redone), then train
      incomplete                  -> exit 2: a prepare job is running or stopped; resuming it
                                     is `palm data prepare JOB.yaml` (two writers would collide)
      the cluster has no CPU, or the prepare job fails -> exit 2 with the command to run
      Ctrl-C during the prepare   -> the workers stop; exit 130 with the command that resumes

Training hosts never tokenise: on a pod each would read the whole corpus (3 TB for
palm540b) and tokenise it again. The workers then open the prepared store by its manifest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def _command(job_file: str, address: str | None) -> str:
    return f"palm data prepare {job_file}" + (f" --address {address}" if address else "")


def _damage(root: str) -> str | None:
    """A current store's files against its manifest's sizes: one listing, no data read."""
    from palm_platform.data import store

    manifest = store.read_manifest(root)
    damage = None if manifest is None else store.damage_in_listing(root, manifest)
    return None if damage is None else str(damage).split(". Fix")[0]


def prepare_if_needed(job, job_file: str, base_dir: Path, *, address: str | None,
                      on_cluster: bool) -> int:
    """0 when the store is current (prepared here if it was not); else 2, said in one line.

    `on_cluster`: run the prepare job on the Ray cluster this process is attached to (`palm
    run`); otherwise in this process (`palm run --direct`, one host).
    """
    from palm_platform.data.prepare import PrepareInterrupted, prepare_store, store_status
    from palm_platform.yaml_safe import one_line

    try:
        status = store_status(job.data, base_dir)
    except (ValueError, OSError) as error:  # a missing input file, an unreadable store
        print(one_line(f"{job_file}: {error}", 400), file=sys.stderr)
        return EXIT_USAGE
    state, reason = status.state, status.reason
    if state == "current":
        if status.unchecked:
            print(f"{job.name}: {status.unchecked}", file=sys.stderr, flush=True)
        damage = _damage(status.root)
        if damage is None:
            return 0
        state, reason = "damaged", damage  # a torn shard: prepare rewrites it (and only it)
    fix = _command(job_file, address)
    if state == "incomplete":  # a prepare job running now, or stopped: never two writers
        from palm_platform.data.store_sources import still_being_prepared

        print(f"{job.name}: {still_being_prepared(status.root, job_file)}", file=sys.stderr)
        return EXIT_USAGE
    if on_cluster:
        import ray

        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < 1:
            print(f"{job.name}: the token store {status.root} is {state} and the Ray "
                  f"cluster has no CPU to prepare it on. Fix: add a CPU worker type "
                  f"(infra/README.md) or run `{fix}` where Ray has CPUs", file=sys.stderr)
            return EXIT_USAGE
    where = "on the cluster's CPUs" if on_cluster else "in this process"
    print(f"{job.name}: token store {state} ({reason}); preparing it {where}",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        result = prepare_store(job.data, base_dir, address=address if on_cluster else None,
                               in_process=not on_cluster, progress=sys.stderr.isatty())
    except PrepareInterrupted as stopped:  # Ctrl-C: committed shards are kept
        print(f"{job.name}: {stopped.message(fix)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before any worker started
        print(f"{job.name}: stopped before any shard was written. Resume: `{fix}`",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as error:  # bad input, a torn shard, another tokenizer: said in a line
        print(one_line(f"{job_file}: {error}", 500), file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # the cluster could not run it: say what to run instead
        print(one_line(f"{job.name}: preparing the token store failed ({type(error).__name__}: "
                       f"{error})", 400) + f". Fix: run `{fix}` and then this command again",
              file=sys.stderr)
        return EXIT_USAGE
    print(f"{job.name}: token store ready: {result.shards} shards ({result.written} written, "
          f"{result.skipped} already there), {result.tokens:,} tokens in "
          f"{time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return 0
