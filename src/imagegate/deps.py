"""FastAPI dependencies shared by every router: the runtime, a session, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db import queries
from imagegate.errors import Unauthorized
from imagegate.runtime import Runtime
from imagegate.security.tokens import Identity, InvalidToken


def runtime_of(request: Request) -> Runtime:
    """The app's runtime, for code that already holds the request."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop that
    # cost more than the rest of an authenticated request.
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


class BearerAuth(SecurityBase):
    """``Authorization: Bearer`` as one dependency: the identity in a valid token, 401 for
    anything else. Identity comes only from the signed token, never from headers such as
    X-User-Id. With ``account_check`` the account must still exist, so a deleted account's
    tokens stop at once; without it the route's own query must fail for a missing account.

    One dependency rather than a chain (scheme, runtime, check): FastAPI solves every
    dependency on every request, and on the hottest routes that bookkeeping cost more than
    the check itself. Being a ``SecurityBase`` keeps the scheme in the OpenAPI document.
    """

    def __init__(self, *, account_check: bool) -> None:
        self.model = HTTPBearerModel(description="An access token from POST /v1/token")
        self.scheme_name = "HTTPBearer"
        self.account_check = account_check

    async def __call__(self, request: Request) -> Identity:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer token")
        runtime = runtime_of(request)
        try:
            identity = runtime.verifier.verify(token)
        except InvalidToken as exc:
            raise Unauthorized("invalid or expired token") from exc
        if self.account_check and not await queries.user_exists(runtime.reads, identity.user_id):
            raise Unauthorized("account no longer exists")
        return identity


TokenIdentity = Annotated[Identity, Depends(BearerAuth(account_check=False))]
CurrentIdentity = Annotated[Identity, Depends(BearerAuth(account_check=True))]


def client_address(request: Request) -> str | None:
    """The peer address; uvicorn rewrites it from X-Forwarded-For only for trusted proxies."""
    return request.client.host if request.client else None
