"""A local Google Cloud Storage emulator for the bucket tests: `python tests/gcs_emulator.py BUCKET`
prints the port it serves on, then serves until killed. Clients find it through
STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage) and TENSORSTORE_GCS_HTTP_URL (Orbax's arrays).

gcp-storage-emulator leaves out three things of the real JSON API: the `x-goog-generation` header on
downloads and `ifGenerationMatch` on uploads and deletes (412 when it does not hold), which
tensorstore relies on (its OCDBT manifests are written with generation preconditions), and the
objects `moveTo` call that gcsfs tries first for a rename (without it, gcsfs retries the 501 for half
a minute per object before it copies and deletes). All three are added here.
"""

import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert, _delete = objects.download, objects.insert, objects.delete


def _generation(storage, bucket: str, name: str) -> str:
    try:
        return storage.get_file_obj(bucket, name)["generation"]
    except NotFound:
        return "0"  # GCS: ifGenerationMatch=0 means "only if the object does not exist"


def _precondition_fails(request, storage, name: str | None) -> bool:
    wanted = request.query.get("ifGenerationMatch")
    return bool(wanted and name) and wanted[0] != _generation(storage, request.params["bucket_name"], name)


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if generation != "0":
        response["x-goog-generation"] = generation


def insert(request, response, storage, *args, **kwargs):
    if _precondition_fails(request, storage, (request.query.get("name") or [None])[0]):
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    return _insert(request, response, storage, *args, **kwargs)


def delete(request, response, storage, *args, **kwargs):
    if _precondition_fails(request, storage, request.params["object_id"]):
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    return _delete(request, response, storage, *args, **kwargs)


def move(request, response, storage, *args, **kwargs):
    bucket, source, dest = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
    try:
        moved = objects._copy(request.base_url, storage, bucket, source, bucket, dest)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    storage.delete_file(bucket, source)
    response.json(moved)


objects.download, objects.insert, objects.delete = download, insert, delete

from gcp_storage_emulator import server, settings  # noqa: E402  (after the patch: routes bind these)

server.HANDLERS = (
    (
        rf"^{settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
        r"(?P<dest_object_id>.*[^/]+)$",
        {server.POST: move},
    ),
) + server.HANDLERS


def main() -> None:
    emulator = server.create_server("127.0.0.1", 0, in_memory=True, default_bucket=sys.argv[1])
    emulator.start()
    print(emulator._api._httpd.server_address[1], flush=True)  # the port the OS picked
    threading.Event().wait()


if __name__ == "__main__":
    main()
