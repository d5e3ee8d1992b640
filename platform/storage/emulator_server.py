"""`python -m palm_platform.storage.emulator_server ...`: gcp-storage-emulator, plus the two
object-generation behaviours of real GCS that TensorStore relies on and it lacks.

TensorStore's OCDBT (Orbax's array format) commits a checkpoint's `manifest.ocdbt` with
conditional writes: it reads the object's generation from the `x-goog-generation` header of
a download and writes with `ifGenerationMatch=G` (0: only if absent), expecting 412 when
another writer got there first. gcp-storage-emulator 2026.7 sends no generation header and
ignores preconditions, and saves then fail at random with "Malformed StorageGeneration".
Both are added here by wrapping its two handlers (before its router table is built);
everything else is the emulator unchanged. Real GCS does both.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert = objects.download, objects.insert


def _generation(storage, bucket: str, name: str | None) -> str:
    """The live generation of an object, "0" when it does not exist (as GCS counts)."""
    try:
        return str(storage.get_file_obj(bucket, name)["generation"]) if name else "0"
    except NotFound:
        return "0"


def download_with_generation(request, response, storage, *args, **kwargs):
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


objects.download = download_with_generation
objects.insert = insert_with_preconditions

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main  # builds the router from the handlers above

    sys.exit(main())
