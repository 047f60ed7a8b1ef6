"""The gateway's owner-read check: may this token read this image or variant, and where in
storage are its bytes?

NGINX asks it (``auth_request``) for plain ``GET /v1/user/{name}`` and
``GET /v1/user/{preset}/{name}``, keeps a yes for 1 s per token (the whole Authorization
header), URL and format, and fetches
the object from storage itself with the presigned path it got: repeated owner reads then skip
Python (deploy/nginx/imagegate-routes.conf.template). Conditional, Range and HEAD requests,
custom sizes, and embedded mode use the ordinary routes. The answers are 200 with
``X-Storage-Path`` and ``X-Content-Sha256``, 401 for a bad token and 403 for anything the
caller may not read (an ``auth_request`` understands only 2xx, 401 and 403; the gateway turns
403 into its 404).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from imagegate.db import queries
from imagegate.deps import ReadIdentity, RuntimeDep
from imagegate.errors import Forbidden, NotFound
from imagegate.runtime import Runtime
from imagegate.uploader.formats import is_image_name
from imagegate.variants.routes import CUSTOM, resolve

router = APIRouter(include_in_schema=False)  # the gateway's, not the API's


def _where(runtime: Runtime, name: str, public: bool, sha256: str) -> Response:
    signed = runtime.storage.signed_path(name, public=public)
    if signed is None:  # local storage (embedded mode): there is no such path
        raise NotFound("Not Found")
    return Response(headers={"X-Storage-Path": signed, "X-Content-Sha256": sha256})


@router.get("/v1/access/v1/user/{filename}")
async def image_access(filename: str, identity: ReadIdentity, runtime: RuntimeDep) -> Response:
    image = None
    if is_image_name(filename):
        image = await queries.image_for_viewer(runtime.reads, filename, owner_id=identity.user_id)
    if image is None:
        raise Forbidden("no such image")
    return _where(runtime, image.name, image.public, image.sha256)


@router.get("/v1/access/v1/user/{preset}/{filename}")
async def variant_access(
    preset: str, filename: str, request: Request, identity: ReadIdentity, runtime: RuntimeDep
) -> Response:
    if preset == CUSTOM:  # custom sizes are never checked here (their errors are 422s)
        raise Forbidden("custom sizes are read through the uploader")
    try:
        found = await resolve(request, runtime, preset, filename, identity.user_id)
    except NotFound as exc:
        raise Forbidden(exc.message) from None
    return _where(runtime, found.name, found.public, found.sha256)
