"""A JAX process for the row-split test (2 CPU devices each), started as a subprocess.

    python rows_worker.py LAYOUT PROCESS_ID PORT

LAYOUT `spanning`: the (pod, data, model) = (1, 2, 2) mesh's model axis spans the two
processes, as palm540b's 12-way model axis spans TPU hosts, so both processes hold both
batch blocks; `contiguous`: each process holds one data index (the local cluster's layout).
Each process reads its rows of a 4-sequence batch with the pipeline's rule, builds the
global array, and prints `RESULT {json}`: its blocks, its rows and the batch every device
holds, gathered.
"""

from __future__ import annotations

import sys

import numpy as np
from processes import print_result  # tests/support/, this script's folder, is its sys.path[0]


def main() -> None:
    layout, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import jax

    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh

    from palm_platform.data.global_array import process_blocks, to_global_array
    from palm_platform.data.pipeline import block_rows
    from palm_platform.mesh import batch_sharding

    a = sorted((d for d in jax.devices() if d.process_index == 0), key=lambda d: d.id)
    b = sorted((d for d in jax.devices() if d.process_index == 1), key=lambda d: d.id)
    grid = [[a[0], b[0]], [a[1], b[1]]] if layout == "spanning" else [[a[0], a[1]], [b[0], b[1]]]
    mesh = Mesh(np.array([grid], dtype=object), ("pod", "data", "model"))
    sharding = batch_sharding(mesh)
    blocks, mine = process_blocks(sharding)
    rows = block_rows(blocks, mine, 4)
    batch = np.arange(4 * 3, dtype=np.int32).reshape(4, 3)  # row g holds 3g, 3g+1, 3g+2
    local = batch[rows]
    array = to_global_array(local, sharding)
    whole = multihost_utils.process_allgather(array, tiled=True)
    print_result({"blocks": blocks, "mine": list(mine), "rows": rows.tolist(),
                  "shape": list(array.shape), "gathered": whole.tolist()})


if __name__ == "__main__":
    main()
