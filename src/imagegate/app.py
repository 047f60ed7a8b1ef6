"""The ASGI app: the same routers, mounted for one role (a service) or all (embedded)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from imagegate import __version__, apidocs, ops
from imagegate.deps import BEARER_SCHEME, BEARER_SCHEME_NAME
from imagegate.errors import install_error_handlers
from imagegate.middleware import BodyLimit, RequestContext
from imagegate.runtime import build_runtime
from imagegate.security import apikey_routes
from imagegate.security import routes as security_routes
from imagegate.server import ImmediateAnswers
from imagegate.serving import ImageFastPath
from imagegate.settings import ALL_ROLES, Role, Settings
from imagegate.uploader import access as access_routes
from imagegate.uploader import routes as uploader_routes
from imagegate.variants import routes as variant_routes
from imagegate.web import routes as web_routes
from imagegate.webhooks import routes as webhook_routes

UPLOAD_PATH = "/v1/upload"


def create_app(settings: Settings, roles: tuple[Role, ...] = ALL_ROLES) -> FastAPI:
    """Build the app serving ``roles``; resources start and stop with its lifespan."""
    runtime = build_runtime(settings, roles)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    routers: list[APIRouter] = []
    if "security" in roles:
        routers.append(security_routes.router)
        routers.append(apikey_routes.router)
        routers.append(webhook_routes.router)  # account settings: with the security service
    if "uploader" in roles:
        routers.append(uploader_routes.router)
        routers.append(variant_routes.router)
        routers.append(access_routes.router)
    if set(roles) == set(ALL_ROLES):  # embedded: the web page too (the gateway serves it)
        routers.append(web_routes.router)
    routers.append(apidocs.router)
    routers.append(ops.router)  # last: a request is matched against routes in order
    app = FastAPI(
        title="imagegate",
        version=__version__,
        summary="Authenticated image uploads and serving",
        lifespan=lifespan,
        # FastAPI's own pages load their scripts from a public CDN; apidocs serves /docs from
        # the package instead, and ReDoc is not offered.
        docs_url=None,
        redoc_url=None,
        openapi_url=apidocs.OPENAPI_PATH,
        # No OpenTelemetry: metrics are Prometheus (/metrics), logs carry request ids, and
        # FastAPI's per-request look for configured OTel providers cost 6 % of a small request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # The routers' routes themselves, not include_router: FastAPI 0.165 wraps an included
        # router and matches every request against it twice, a fifth of a small request's
        # cost. The routers carry no prefix or dependencies, so their routes serve as they are.
        routes=[route for router in routers for route in router.routes],
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    _document_bearer_scheme(app)
    # Uploads stream under their own, larger cap; every other body is small JSON.
    app.add_middleware(
        BodyLimit, max_bytes=settings.json_body_max_bytes, exempt=frozenset({UPLOAD_PATH})
    )
    # Around FastAPI's own layers too: small images (serving.py) answered with nothing else;
    # the hottest ones by the server before they become requests to the app (server.py).
    fast_path = ImageFastPath(runtime)
    context = RequestContext.outermost(app, runtime.metrics, fast_path.wrap)
    app.state.immediate = ImmediateAnswers(fast_path, context)
    return app


def _document_bearer_scheme(app: FastAPI) -> None:
    """Declare the Bearer scheme in the OpenAPI document even where no route has it as a
    dependency (the security service's routes call ``authenticate`` themselves)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # built once; FastAPI keeps it in app.openapi_schema
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME_NAME] = BEARER_SCHEME.model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point
