"""The ASGI app: the same routers, mounted for one role (a service) or all (embedded)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from imagegate import __version__, ops
from imagegate.errors import install_error_handlers
from imagegate.middleware import BodyLimit, RequestContext
from imagegate.runtime import build_runtime
from imagegate.security import routes as security_routes
from imagegate.settings import ALL_ROLES, Role, Settings
from imagegate.uploader import routes as uploader_routes

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

    routers = [ops.router]
    if "security" in roles:
        routers.append(security_routes.router)
    if "uploader" in roles:
        routers.append(uploader_routes.router)
    app = FastAPI(
        title="imagegate",
        version=__version__,
        summary="Authenticated image uploads and serving",
        lifespan=lifespan,
        # The routers' routes themselves, not include_router: FastAPI 0.165 wraps an included
        # router and matches every request against it twice, a fifth of a small request's
        # cost. The routers carry no prefix or dependencies, so their routes serve as they are.
        routes=[route for router in routers for route in router.routes],
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    # Uploads stream under their own, larger cap; every other body is small JSON.
    app.add_middleware(
        BodyLimit, max_bytes=settings.json_body_max_bytes, exempt=frozenset({UPLOAD_PATH})
    )
    app.add_middleware(RequestContext, metrics=runtime.metrics)
    return app
