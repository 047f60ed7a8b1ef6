"""Sending stored images: ETag (the sha256), 304, Range, HEAD, cache and safety headers."""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.responses import FileResponse

from imagegate.db.models import Image
from imagegate.errors import NotFound
from imagegate.storage.base import Storage

PUBLIC_CACHE = "public, max-age=31536000, immutable"
PRIVATE_CACHE = "private, max-age=0, must-revalidate"


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    tags = (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    return etag in tags


def image_response(request: Request, storage: Storage, image: Image, *, public: bool) -> Response:
    """The image's bytes with the headers every image answer carries."""
    etag = f'"{image.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": PUBLIC_CACHE if public else PRIVATE_CACHE,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if _etag_matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    path = storage.local_path(image.name)
    if path is None:
        raise NotFound("image bytes are not available from this service")
    # FileResponse streams in chunks and answers Range (206/416) and HEAD itself.
    return FileResponse(path, media_type=image.content_type, headers=headers)
