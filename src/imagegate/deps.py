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


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


_bearer = HTTPBearer(auto_error=False, description="An access token from POST /v1/token")


async def bearer_identity(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The identity of a valid ``Authorization: Bearer`` token of an existing account; 401 for
    anything else. Identity comes only from the signed token, never from headers such as
    X-User-Id; the account lookup makes a deleted account's tokens stop at once."""
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("missing bearer token")
    try:
        identity = runtime.verifier.verify(credentials.credentials.strip())
    except InvalidToken as exc:
        raise Unauthorized("invalid or expired token") from exc
    # A session of its own, closed at once: the request's session may live through a long
    # upload, and must not hold a pooled connection all that time.
    async with runtime.sessions() as session:
        if not await queries.user_exists(session, identity.user_id):
            raise Unauthorized("account no longer exists")
    return identity


CurrentIdentity = Annotated[Identity, Depends(bearer_identity)]


def client_address(request: Request) -> str | None:
    """The peer address; uvicorn rewrites it from X-Forwarded-For only for trusted proxies."""
    return request.client.host if request.client else None
