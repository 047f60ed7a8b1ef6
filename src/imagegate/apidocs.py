"""``/docs``: Swagger UI served from the package itself, never from a third-party origin.

FastAPI's default page loads Swagger UI from a public CDN: blank on an offline network, and
every visitor's address goes to a third party. Here the page and its three assets come from
the ``swagger-ui-bundle-v2`` package (Swagger UI 5: version 4, in ``swagger-ui-bundle``, cannot
render the OpenAPI 3.1 that FastAPI writes), under a Content-Security-Policy that allows this
origin only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no py.typed

from imagegate.errors import NotFound

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/openapi.json"
# Only what the page loads: the package also holds a demo index.html that points elsewhere.
ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})

router = APIRouter(include_in_schema=False)
_static = StaticFiles(directory=swagger_ui_path)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _policy(script_hashes: list[str]) -> str:
    """The page's CSP: scripts from this origin plus the page's own init script (by hash, so
    no other inline script runs); styles may be inline because Swagger UI sets some at run
    time; images may be ``data:`` because its stylesheet draws icons that way."""
    scripts = " ".join(["'self'", *(f"'sha256-{h}'" for h in script_hashes)])
    return (
        "default-src 'none'; "
        f"script-src {scripts}; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "connect-src 'self'; "
        "base-uri 'none'; "
        "form-action 'none'; "
        "frame-ancestors 'none'"
    )


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@cache
def _page() -> tuple[bytes, dict[str, str]]:
    """The HTML (built once: it depends on nothing that changes) and its headers."""
    html = get_swagger_ui_html(
        openapi_url=OPENAPI_PATH,
        title="imagegate API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        # No validator badge: it is an image fetched from the validator's public server.
        swagger_ui_parameters={"validatorUrl": None},
    ).body
    hashes = [
        base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        for script in _INLINE_SCRIPT.findall(bytes(html).decode())
    ]
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": _policy(hashes),
        "Cache-Control": "no-cache",
    }
    return bytes(html), headers


@router.api_route(DOCS_PATH, methods=["GET", "HEAD"])
async def docs() -> Response:
    body, headers = _page()
    return Response(body, media_type="text/html", headers=headers)


@router.api_route(ASSETS_PATH + "/{name}", methods=["GET", "HEAD"])
async def asset(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise NotFound("no such file")
    response = await _static.get_response(name, request.scope)
    response.headers.update(
        {
            **SECURITY_HEADERS,
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
            # Revalidated (ETag) after an hour, so an upgraded package shows within the hour.
            "Cache-Control": "public, max-age=3600",
        }
    )
    return response
