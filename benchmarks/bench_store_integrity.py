"""The token store's integrity checks and a training process's start, in time and in requests.

    python benchmarks/bench_store_integrity.py [--mb 30] [--files 30] [--work DIR]

On a corpus of about `--mb` MB of JSONL text in `--files` files (the embedded corpus's
documents, numbered so none repeats), prepared in this process into ~`--files` shards:
  - `palm data info` (the cheap check) and `--deep` on the store on local disk and on the
    same store on gs:// (the local emulator), each as a ratio to one training process's time
    to its first batch (a fresh process, from its start: imports, build_pipeline, its first
    local batch of 8 x 257 tokens; a real worker also initialises JAX and compiles its step,
    so the true ratio is smaller) on that store;
  - the GCS requests one training process makes before its first batch, on a gs:// store
    whose inputs are 10 and then 100 files on gs:// (the same 0.5 MB), named by one glob or
    path by path (counted by a proxy in front of the emulator,
    tests/support/request_counter.py): the goal is a count independent of the number of
    input files.
Runs against whichever palm_platform is importable: PYTHONPATH at an older tree's packages
gives the "before" figures with the same script (`--deep` is reported as n/a there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # tests.support (the counting proxy), after the stdlib

_CHILD = r"""
import json, sys, time
import psutil
from pathlib import Path
from palm_platform.data import DataConfig, build_pipeline
config = DataConfig.model_validate(json.loads(sys.argv[1]))
start = time.perf_counter()
pipeline = build_pipeline(config, seq_len=256, base_dir=Path(sys.argv[2]), process_index=0,
                          process_count=1)
pipeline.local_batch(8)
print(json.dumps({"first_batch_s": time.time() - psutil.Process().create_time(),
                  "data_s": time.perf_counter() - start}))
"""


def write_corpus(folder: Path, mb: float, files: int) -> None:
    from palm_platform.data.corpus import iter_builtin_documents

    documents = list(iter_builtin_documents("builtin:default-corpus"))
    folder.mkdir(parents=True, exist_ok=True)
    per_file, n = int(mb * 1e6 / files), 0
    for f in range(files):
        lines, size = [], 0
        while size < per_file:
            text = f"{n}: " + documents[n % len(documents)]
            lines.append(json.dumps({"text": text}))
            size += len(lines[-1]) + 1
            n += 1
        (folder / f"part-{f:04d}.jsonl").write_text("\n".join(lines) + "\n")


def config_for(paths: list[str], store: str, unit_mb: float):
    from palm_platform.data.config import DataConfig, SourceConfig

    return DataConfig(sources=[SourceConfig(name="c", paths=paths, weight=1)], store=store,
                      prepare={"unit_mb": unit_mb})


def first_batch_s(config, base: Path, env: dict | None = None) -> float:
    """Seconds from a fresh process's start (imports included) to its first batch."""
    out = subprocess.run([sys.executable, "-c", _CHILD, config.model_dump_json(), str(base)],
                         capture_output=True, text=True, timeout=1800,
                         env={**os.environ, **(env or {})})
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["first_batch_s"]


def timed_checks(root: str) -> dict:
    from palm_platform.data import store

    start = time.perf_counter()
    token_store = store.TokenStore.open(root)
    token_store.check()
    cheap = time.perf_counter() - start
    try:
        start = time.perf_counter()
        store.TokenStore.open(root).check(deep=True)
        deep = time.perf_counter() - start
    except TypeError:  # before: no --deep
        deep = None
    return {"shards": len(token_store.sidecars), "info_s": cheap, "deep_s": deep}


def copy_to_gcs(local: Path, url: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.pipe(f"{path}/{file.relative_to(local)}", file.read_bytes())


def requests_before_first_batch(emulator, bucket: str, files: int, explicit: bool,
                                work: Path) -> dict:
    """Requests of one training process before its first batch, by what they reach: the
    raw inputs or the store. The corpus is the same 0.5 MB whatever the file count, so the
    store (one shard) and the batch are the same; only the inputs' file count changes."""
    from palm_platform.data.prepare import prepare_store
    from tests.support.request_counter import RequestCounter

    name = f"small-{files}"
    if not (work / name).exists():
        write_corpus(work / name, 0.5, files)
    copy_to_gcs(work / name, f"{bucket}/{name}")  # a fresh emulator each run
    paths = ([f"{bucket}/{name}/part-{f:04d}.jsonl" for f in range(files)] if explicit
             else [f"{bucket}/{name}/*.jsonl"])
    store = f"{bucket}/{name}-{'paths' if explicit else 'glob'}-store"
    config = config_for(paths, store, unit_mb=1.0)
    prepare_store(config, work, in_process=True, progress=False)
    with RequestCounter(emulator.url) as counter:
        env = {"STORAGE_EMULATOR_HOST": counter.url, "TENSORSTORE_GCS_HTTP_URL": counter.url}
        first_batch_s(config, work, env)
        log = list(counter.log)
    to_store = sum(1 for _, path in log if "-store" in path)
    return {"inputs": len(log) - to_store, "store": to_store}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=30)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--work", default=None, help="keep the corpus and store here")
    args = parser.parse_args()
    import palm_platform
    from palm_platform.data.prepare import prepare_store
    from palm_platform.storage.emulator import gcs_emulator

    print(f"palm_platform from {Path(palm_platform.__path__[0]).resolve()}")
    work = Path(args.work or tempfile.mkdtemp(prefix="palm-bench-integrity-"))
    corpus = work / "corpus"
    if not corpus.exists():
        write_corpus(corpus, args.mb, args.files)
    text_mb = sum(p.stat().st_size for p in corpus.iterdir()) / 1e6
    config = config_for([str(corpus / "*.jsonl")], str(work / "store"), unit_mb=1.1)
    started = time.perf_counter()
    result = prepare_store(config, work, in_process=True, progress=False)
    print(f"corpus {text_mb:.1f} MB in {args.files} files -> {result.shards} shards, "
          f"{result.tokens:,} tokens (prepared or found in {time.perf_counter() - started:.1f} s)")
    rows = []
    local = timed_checks(str(work / "store"))
    local["first_batch_s"] = first_batch_s(config, work)
    rows.append(("local disk", local))
    with gcs_emulator() as emulator:
        env = emulator.env
        os.environ.update(env)
        bucket = emulator.create_bucket("palm-bench-integrity")
        copy_to_gcs(work / "store", f"{bucket}/store")
        remote = timed_checks(f"{bucket}/store")
        remote["first_batch_s"] = first_batch_s(
            config.model_copy(update={"store": f"{bucket}/store"}), work, env)
        rows.append(("gs:// (emulator)", remote))
        counts = {(files, explicit): requests_before_first_batch(emulator, bucket, files,
                                                                 explicit, work)
                  for explicit in (False, True) for files in (10, 100)}
    print("| store | shards | first batch | info | info / first batch | --deep | "
          "--deep / first batch |")
    print("|---|---|---|---|---|---|---|")
    for where, r in rows:
        deep = "n/a" if r["deep_s"] is None else f"{r['deep_s']:.2f} s"
        deep_ratio = "n/a" if r["deep_s"] is None else f"{r['deep_s'] / r['first_batch_s']:.2f}"
        print(f"| {where} | {r['shards']} | {r['first_batch_s']:.2f} s | {r['info_s']:.2f} s | "
              f"{r['info_s'] / r['first_batch_s']:.2f} | {deep} | {deep_ratio} |")
    print("\nGCS requests of one training process before its first batch (store and inputs "
          "on gs://):")
    print("| input files | named by | requests | to the raw inputs | to the store |")
    print("|---|---|---|---|---|")
    for (files, explicit), c in counts.items():
        print(f"| {files} | {'each path' if explicit else 'one glob'} | "
              f"{c['inputs'] + c['store']} | {c['inputs']} | {c['store']} |")


if __name__ == "__main__":
    main()
