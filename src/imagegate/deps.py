"""FastAPI dependencies shared by every router: the runtime, a session, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db import queries
from imagegate.errors import Unauthorized
from imagegate.runtime import Runtime
from imagegate.security.tokens import Identity, InvalidToken


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop that
    # cost more than the rest of an authenticated request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


_bearer = HTTPBearer(auto_error=False, description="An access token from POST /v1/token")


async def token_identity(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The identity in a valid ``Authorization: Bearer`` token; 401 for anything else. The
    account may have been deleted since: use :func:`bearer_identity` unless the route's own
    query fails for a missing account. Identity comes only from the signed token, never from
    headers such as X-User-Id."""
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("missing bearer token")
    try:
        return runtime.verifier.verify(credentials.credentials.strip())
    except InvalidToken as exc:
        raise Unauthorized("invalid or expired token") from exc


TokenIdentity = Annotated[Identity, Depends(token_identity)]


async def bearer_identity(runtime: RuntimeDep, identity: TokenIdentity) -> Identity:
    """The identity of a valid bearer token of an existing account; 401 for anything else.
    The account lookup makes a deleted account's tokens stop at once."""
    if not await queries.user_exists(runtime.reads, identity.user_id):
        raise Unauthorized("account no longer exists")
    return identity


CurrentIdentity = Annotated[Identity, Depends(bearer_identity)]


def client_address(request: Request) -> str | None:
    """The peer address; uvicorn rewrites it from X-Forwarded-For only for trusted proxies."""
    return request.client.host if request.client else None
