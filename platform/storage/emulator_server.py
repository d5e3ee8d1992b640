"""`python -m palm_platform.storage.emulator_server ...`: gcp-storage-emulator, plus the two
object-generation behaviours of real GCS that TensorStore relies on and it lacks.

TensorStore's OCDBT (Orbax's array format) commits a checkpoint's `manifest.ocdbt` with
conditional writes: it reads the object's generation from the `x-goog-generation` header of
a download and writes with `ifGenerationMatch=G` (0: only if absent), expecting 412 when
another writer got there first. gcp-storage-emulator 2026.7 sends no generation header and
ignores preconditions, and saves then fail at random with "Malformed StorageGeneration".
Both are added here by wrapping its two handlers (before its router table is built);
everything else is the emulator unchanged. Real GCS does both.

A third: TensorStore lists a prefix with `startOffset`/`endOffset` (not `prefix`), which the
emulator ignores, so a listing returned the whole bucket: TensorStore then aborted the
process (a key shorter than the prefix), and its prefix delete (`delete_existing`) deleted
every object of the bucket. The listing handler honours both offsets here. A fourth: suffix
byte ranges (`Range: bytes=-N`, how TensorStore finds a zarr3 shard's index at the end of
its object, so every partial read of a token store) are ignored by the emulator; they are
turned into the absolute range it serves.
"""

from __future__ import annotations

import re
import signal
import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert, _ls = objects.download, objects.insert, objects.ls


def _generation(storage, bucket: str, name: str | None) -> str:
    """The live generation of an object, "0" when it does not exist (as GCS counts)."""
    try:
        return str(storage.get_file_obj(bucket, name)["generation"]) if name else "0"
    except NotFound:
        return "0"


def _suffix_range_to_absolute(request, storage) -> None:
    """`Range: bytes=-N` (the last N bytes; TensorStore reads a zarr3 shard's index so) as
    the absolute range the emulator understands; it ignores suffix ranges."""
    headers = request._request_handler.headers
    suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", headers.get("range", "") or "")
    if suffix is None:
        return
    try:
        size = len(storage.get_file(request.params["bucket_name"], request.params["object_id"]))
    except NotFound:
        return  # the emulator answers 404 itself
    del headers["range"]
    headers["range"] = f"bytes={max(0, size - int(suffix[1]))}-"


def download_with_generation(request, response, storage, *args, **kwargs):
    _suffix_range_to_absolute(request, storage)
    _download(request, response, storage, *args, **kwargs)
    if response.status == HTTPStatus.OK or response.status == HTTPStatus.PARTIAL_CONTENT:
        generation = _generation(storage, request.params["bucket_name"],
                                 request.params["object_id"])
        response["x-goog-generation"] = generation
        response["x-goog-metageneration"] = "1"


def insert_with_preconditions(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    if wanted:
        name = (request.query.get("name") or [None])[0]
        if name is None and isinstance(request.data, dict):  # multipart: name in metadata
            name = request.data.get("meta", {}).get("name")
        if _generation(storage, request.params["bucket_name"], name) != wanted[0]:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return None
    return _insert(request, response, storage, *args, **kwargs)


def ls_with_offsets(request, response, storage, *args, **kwargs):
    start = (request.query.get("startOffset") or [None])[0]
    end = (request.query.get("endOffset") or [None])[0]
    if not (start or end):
        return _ls(request, response, storage, *args, **kwargs)
    listing = storage.get_file_list

    def in_range(*list_args, **list_kwargs):
        files, prefixes = listing(*list_args, **list_kwargs)
        return [f for f in files if (not start or f["name"] >= start)
                and (not end or f["name"] < end)], prefixes

    storage.get_file_list = in_range  # the server is single-threaded: one request at a time
    try:
        return _ls(request, response, storage, *args, **kwargs)
    finally:
        del storage.get_file_list


objects.download = download_with_generation
objects.ls = ls_with_offsets
objects.insert = insert_with_preconditions

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main  # builds the router from the handlers above

    # SIGINT is how `emulator._stop` (and Ctrl-C) ends the server. A parent started in the
    # background by a non-interactive shell (`nohup scripts/demo.sh &`, a CI runner) passes
    # SIGINT down as ignored, and Python then keeps it ignored: every stop waited its 10 s
    # patience and killed the server. Take Python's own handler back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
