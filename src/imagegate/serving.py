"""Sending stored images: ETag (the sha256), 304, Range, HEAD, cache and safety headers.

Bytes leave by the cheapest path the deployment has: a local file (sendfile-like streaming
with Range support), an X-Accel-Redirect that lets NGINX fetch the object from S3 itself, or,
with S3 and no gateway, a stream through this process.
"""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from imagegate.db.queries import StoredImage
from imagegate.storage.base import Storage

PUBLIC_CACHE = "public, max-age=31536000, immutable"
PRIVATE_CACHE = "private, max-age=0, must-revalidate"


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    tags = (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    return etag in tags


def image_response(
    request: Request,
    storage: Storage,
    image: StoredImage,
    *,
    public_route: bool,
    accel_prefix: str | None,
) -> Response:
    """The image's bytes with the headers every image answer carries."""
    etag = f'"{image.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": PUBLIC_CACHE if public_route else PRIVATE_CACHE,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if _etag_matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    path = storage.local_path(image.name)
    if path is not None:
        # FileResponse streams in chunks and answers Range (206/416) and HEAD itself.
        return FileResponse(path, media_type=image.content_type, headers=headers)
    head = request.method == "HEAD"
    signed = storage.signed_path(image.name, public=image.public, head=head)
    if accel_prefix and signed:
        # NGINX fetches the object (Range and all) from storage; the sha256 rides in the path
        # so the gateway can send it as the ETag.
        accel = f"{accel_prefix.rstrip('/')}/{image.sha256}{signed}"
        return Response(
            media_type=image.content_type, headers={**headers, "X-Accel-Redirect": accel}
        )
    headers["Content-Length"] = str(image.bytes)
    if head:
        return Response(media_type=image.content_type, headers=headers)
    return StreamingResponse(
        storage.stream(image.name, public=image.public),
        media_type=image.content_type,
        headers=headers,
    )
