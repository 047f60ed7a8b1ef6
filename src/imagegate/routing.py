"""Route registration and path checks shared by the services' routers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Response

Endpoint = Callable[..., Awaitable[Response]]


def get_and_head(router: APIRouter, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """GET and HEAD as two routes: one route with both methods gives both one operation id
    (FastAPI warns, and which method's name wins varies from run to run). A 405 for another
    method lists the first route's method (GET) in ``Allow``."""

    def register(endpoint: Endpoint) -> Endpoint:
        for method in ("GET", "HEAD"):
            router.add_api_route(path, endpoint, methods=[method], **options)
        return endpoint

    return register


def is_uuid(value: str) -> bool:
    """A canonical (lower-case, hyphenated) UUID: ids in paths are checked before any lookup."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
