"""The web page in embedded mode: ``/`` and its hashed assets (the gateway serves the same files
from ``imagegate web export`` in production)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from imagegate.errors import NotFound
from imagegate.routing import get_and_head
from imagegate.web.assets import PAGE_HEADERS, Asset, site

router = APIRouter(include_in_schema=False)

# The page is revalidated on every load (its asset names change with every release); assets
# never change under their names.
PAGE_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"


def _send(request: Request, asset: Asset, cache_control: str, headers: dict[str, str]) -> Response:
    common = {
        "Cache-Control": cache_control,
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
        **headers,
    }
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=common)
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    body = asset.gzipped if gzipped else asset.body
    if gzipped:
        common["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.content_type, headers=common)


@get_and_head(router, "/")
async def page(request: Request) -> Response:
    return _send(request, site().index, PAGE_CACHE, PAGE_HEADERS)


@get_and_head(router, "/assets/{path:path}")
async def asset(request: Request, path: str) -> Response:
    found = site().assets.get(path)
    if found is None:
        raise NotFound("no such file")
    return _send(request, found, ASSET_CACHE, {"X-Content-Type-Options": "nosniff"})
