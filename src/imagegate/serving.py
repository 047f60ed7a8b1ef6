"""Sending stored images: ETag (the sha256), 304, Range, HEAD, cache and safety headers.

Bytes leave by the cheapest path the deployment has: a local file (sendfile-like streaming
with Range support), an X-Accel-Redirect that lets NGINX fetch the object from S3 itself, or,
with S3 and no gateway, a stream through this process.
"""

from __future__ import annotations

import re

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from imagegate.db.queries import StoredImage
from imagegate.errors import AppError
from imagegate.storage.base import Storage

PUBLIC_CACHE = "public, max-age=31536000, immutable"
PRIVATE_CACHE = "private, max-age=0, must-revalidate"


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    tags = (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    return etag in tags


def _vet_range(request: Request, image: StoredImage, etag: str) -> None:
    """Decide a Range request before FileResponse sees it, which would answer its errors in
    plain text: a range past the end is a 416 in our JSON shape (with ``Content-Range: bytes
    */size``), and a malformed one is ignored, as RFC 9110 allows (the whole image, 200)."""
    value = request.headers.get("range")
    if value is None:
        return
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        # A different (or date) validator: the whole image, which never changes anyway.
        _drop_range(request)
        return
    verdict = _range_verdict(value, image.bytes)
    if verdict == "unsatisfiable":
        raise AppError(
            "requested range not satisfiable",
            status=416,
            headers={"Content-Range": f"bytes */{image.bytes}"},
        )
    if verdict == "ignore":
        _drop_range(request)


_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
MAX_RANGES = 100  # FileResponse's own limit: more are served whole


def _range_verdict(value: str, size: int) -> str:
    """``serve`` (every range is valid and satisfiable: FileResponse answers 206),
    ``unsatisfiable`` (valid, none within the image: 416), or ``ignore`` (malformed, too
    many, or a mix of satisfiable and not: the whole image)."""
    unit, sep, specs = value.partition("=")
    parts = [p.strip(" \t") for p in specs.split(",")]
    if not sep or unit.strip().lower() != "bytes" or len(parts) > MAX_RANGES:
        return "ignore"
    satisfiable = []
    for part in filter(None, parts):
        match = _RANGE_SPEC.fullmatch(part)
        if match is None or match.group(0) == "-":
            return "ignore"
        first, last = match.groups()
        try:
            if first and last and int(last) < int(first):
                return "ignore"
            satisfiable.append(int(first) < size if first else int(last) > 0)
        except ValueError:  # over Python's digit limit for int()
            return "ignore"
    if not satisfiable:
        return "ignore"
    if not any(satisfiable):
        return "unsatisfiable"
    return "serve" if all(satisfiable) else "ignore"


def _drop_range(request: Request) -> None:
    request.scope["headers"] = [
        (k, v) for k, v in request.scope["headers"] if k not in (b"range", b"if-range")
    ]


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
    # Decided here for every path: storage behind the gateway would answer some unsatisfiable
    # ranges with the whole image.
    _vet_range(request, image, etag)
    path = storage.local_path(image.name)
    if path is not None:
        # FileResponse streams in chunks and answers Range (206) and HEAD itself.
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
