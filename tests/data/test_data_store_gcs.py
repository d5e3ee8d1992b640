"""The read path on gs:// (the local GCS emulator): a pipeline reading a store in place on
gs:// gives the batches and the held-out split of the same store on local disk (partial
reads of zarr3 shards: the emulator serves suffix byte ranges, emulator_server.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from palm_platform.data.config import DataConfig, SourceConfig
from palm_platform.data.heldout_split import split_sources
from palm_platform.data.pipeline import build_pipeline
from palm_platform.data.prepare import prepare_store
from palm_platform.data.store import StoreError


def _pipeline(config, tmp_path, records):
    def split(sources, tokenizer):
        result = split_sources(sources, tokenizer.eos_id, 0.05, 0, None)
        records.append(result.record)
        return result.train

    return build_pipeline(config, seq_len=32, base_dir=tmp_path, process_index=1,
                          process_count=2, source_filter=split)


@pytest.mark.slow
def test_batches_and_split_from_a_gs_store_equal_the_local_stores(gcs_bucket, tmp_path):
    lines = [json.dumps({"text": f"document {i}: " + "words and more words " * (i % 17)})
             for i in range(400)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    sources = [SourceConfig(name="a", paths=["a.jsonl"], weight=1)]
    local = DataConfig(sources=sources, store="store", prepare={"unit_mb": 0.004})
    remote = local.model_copy(update={"store": f"{gcs_bucket}/read-path"})
    local_records, remote_records = [], []
    on_disk = _pipeline(local, tmp_path, local_records)
    # A host of a 2-host job never tokenises a gs:// store itself: `palm run` prepares it.
    with pytest.raises(StoreError, match="palm data prepare"):
        _pipeline(remote, tmp_path, [])
    prepare_store(remote, tmp_path, in_process=True, progress=False)
    on_gcs = _pipeline(remote, tmp_path, remote_records)  # read in place
    assert remote_records == local_records and remote_records[0]["sources"]["a"]["heldout"]
    for _ in range(10):
        np.testing.assert_array_equal(on_gcs.local_batch(8), on_disk.local_batch(8))


_FIRST_BATCH = r"""
import json, sys
from pathlib import Path
from palm_platform.data import DataConfig, build_pipeline
config = DataConfig.model_validate(json.loads(sys.argv[1]))
pipeline = build_pipeline(config, seq_len=32, base_dir=Path(sys.argv[2]), process_index=0,
                          process_count=2)
print(pipeline.local_batch(8).shape)
"""


@pytest.mark.slow
@pytest.mark.parametrize("files", [3, 30])
def test_a_training_process_never_reaches_the_raw_inputs_on_gcs(gcs_emulator, gcs_bucket,
                                                                 tmp_path, files):
    """Counted on the emulator (a proxy in front of it): a training process's requests before
    its first batch go to the store only, whatever the number of input files."""
    import fsspec

    from tests.support.request_counter import RequestCounter

    fs = fsspec.filesystem("gs")
    paths = []
    for i in range(files):
        lines = [json.dumps({"text": f"file {i} document {d}: " + "some words " * 20})
                 for d in range(60 // files + 1)]
        fs.pipe(f"{gcs_bucket}/inputs-{files}/{i:03d}.jsonl".removeprefix("gs://"),
                ("\n".join(lines) + "\n").encode())
        paths.append(f"{gcs_bucket}/inputs-{files}/{i:03d}.jsonl")  # each by its own path
    config = DataConfig(sources=[SourceConfig(name="a", paths=paths, weight=1)],
                        store=f"{gcs_bucket}/store-{files}")
    prepare_store(config, tmp_path, in_process=True, progress=False)
    with RequestCounter(gcs_emulator.url) as counter:
        env = {**os.environ, "STORAGE_EMULATOR_HOST": counter.url,
               "TENSORSTORE_GCS_HTTP_URL": counter.url}
        out = subprocess.run([sys.executable, "-c", _FIRST_BATCH, config.model_dump_json(),
                              str(tmp_path)], env=env, capture_output=True, text=True,
                             timeout=300)
        log = list(counter.log)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not [path for _, path in log if f"inputs-{files}" in path]
    assert any("manifest.json" in path for _, path in log)
    assert len(log) < 20  # the manifest, the shard's array metadata, index and chunks
