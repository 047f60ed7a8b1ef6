"""HTTP routes of the security service: register, login, caller info, token validation, JWKS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db import queries
from imagegate.db.models import User
from imagegate.deps import (
    BEARER_REQUIRED,
    RuntimeDep,
    SessionDep,
    authenticate,
    client_address,
    runtime_of,
)
from imagegate.errors import (
    AppError,
    BadRequest,
    TooManyRequests,
    Unauthorized,
    error_responses,
)
from imagegate.jsonbody import parse_json
from imagegate.runtime import Runtime
from imagegate.security import devices, throttle
from imagegate.security.accounts import create_account, delete_account
from imagegate.security.passwords import LOGIN_RE, MAX_PASSWORD_LENGTH, is_valid_unicode
from imagegate.security.tokens import Identity
from imagegate.settings import Settings

router = APIRouter(tags=["security"])


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    login: Annotated[
        StrictStr, Field(min_length=3, max_length=64, pattern=r"^\s*[A-Za-z0-9._-]+\s*$")
    ]
    password: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]

    @field_validator("password")
    @classmethod
    def _valid_unicode(cls, value: str) -> str:
        # A JSON escape can carry a lone surrogate, which no hash (nor database) can encode.
        if not is_valid_unicode(value):
            raise ValueError("password must be valid Unicode text (no lone surrogates)")
        return value


class UserOut(BaseModel):
    id: str
    login: str
    created_at: datetime


class UserInfo(UserOut):
    images: int
    bytes: int


class TokenOut(BaseModel):
    access_token: str
    token_type: str
    expires_in: int


_REGISTER_ERRORS = error_responses(409, 413, 422)


@router.post(
    "/v1/user",
    status_code=201,
    response_model=UserOut,
    summary="Register",
    responses=_REGISTER_ERRORS,
)
@router.post(
    "/v1/register",
    status_code=201,
    response_model=UserOut,
    summary="Register (alias)",
    responses=_REGISTER_ERRORS,
)
async def register(body: Credentials, runtime: RuntimeDep, session: SessionDep) -> UserOut:
    user = await create_account(
        session,
        runtime.passwords,
        body.login,
        body.password,
        min_length=runtime.settings.password_min_length,
        source=runtime.settings.event_source,
    )
    return UserOut(id=user.id, login=user.login, created_at=user.created_at)


_SHAPE = 'expected a JSON body {"login": "...", "password": "..."}'


async def _read_credentials(request: Request) -> tuple[str, str]:
    """The login and password of a /v1/token body; 400 for anything else, before any throttle
    or password work (bad input is not a guess)."""
    try:
        body: Any = parse_json(await request.body())
    except BadRequest as exc:  # invalid UTF-8 or JSON, deep nesting, lone surrogates
        raise BadRequest(f"{exc.message}; {_SHAPE}") from exc
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("login"), str)
        or not isinstance(body.get("password"), str)
    ):
        raise BadRequest(_SHAPE)
    if len(body["password"]) > MAX_PASSWORD_LENGTH:  # no account can have it: not a guess
        raise BadRequest(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    return body["login"], body["password"]


def _memory_throttle(request: Request) -> throttle.MemoryThrottle:
    """This process's fallback counters (used only while the database cannot be written)."""
    state = request.app.state
    memory: throttle.MemoryThrottle | None = getattr(state, "login_memory_throttle", None)
    if memory is None:
        memory = state.login_memory_throttle = throttle.MemoryThrottle()
    return memory


async def _record_success(
    session: AsyncSession,
    memory: throttle.MemoryThrottle,
    attempt: throttle.Attempt,
    settings: Settings,
    user_id: str,
    device: str | None,
    new_hash: str | None,
) -> str | None:
    """A successful login's bookkeeping, in one transaction: the throttle's keys, a new device
    cookie (returned) replacing the one presented, a rehashed password. Best effort: when the
    database cannot be written the login still succeeds, without a new cookie."""
    lifetime = settings.login_device_lifetime_seconds
    try:
        await throttle.succeeded(session, memory, attempt)
        token = None
        if lifetime > 0:
            token = await devices.issue(session, user_id, throttle.clock(), lifetime, device)
        if new_hash is not None:
            await queries.set_password_hash(session, user_id, new_hash)
        await session.commit()
    except sa_exc.DBAPIError as exc:
        if not throttle.cannot_write(exc):
            raise
        await session.rollback()
        throttle.warn_unwritable("cannot record a successful login (it still succeeds)", exc)
        return None
    return token


@dataclass(frozen=True)
class _Checked:
    """A password that proved right, with what the login's bookkeeping needs."""

    identity: Identity
    stored_hash: str
    device: str | None
    memory: throttle.MemoryThrottle
    attempt: throttle.Attempt


async def _check_password(
    request: Request,
    runtime: Runtime,
    session: AsyncSession,
    login: str,
    password: str,
    wrong: str,
) -> _Checked:
    """The one password check (login, and confirming an account's deletion): throttled per
    login and per address before the password is checked; a wrong password stays counted and
    answers 401 ``wrong``; 429 while throttled."""
    s = runtime.settings
    policy = throttle.ThrottlePolicy(
        s.login_max_failures,
        s.login_window_seconds,
        s.login_lockout_seconds,
        s.login_lockout_max_seconds,
    )
    user = await queries.user_by_login(session, login) if LOGIN_RE.fullmatch(login) else None
    stored_hash = user.password_hash if user else None
    identity = Identity(user.id, user.login) if user else None
    # A device cookie counts only on the login it was issued for (an unknown login has none).
    device = (
        await devices.trusted(
            session, request.cookies.get(devices.COOKIE), user.id, throttle.clock()
        )
        if user and s.login_device_lifetime_seconds > 0
        else None
    )
    await session.rollback()  # no connection held while hashing
    memory = _memory_throttle(request)
    if device is not None:
        # A client that logged in before: its own budget, not the login's lockout nor the
        # address's (a stranger behind the same NAT cannot lock it out either).
        account_key, address_key = throttle.device_key(device), None
    else:
        address = client_address(request)
        account_key = throttle.login_key(login)
        address_key = throttle.address_key(address) if address else None
    try:
        attempt = await throttle.begin(session, memory, account_key, address_key, policy)
    except throttle.Throttled as exc:
        runtime.metrics.logins.labels("throttled").inc()
        raise TooManyRequests(
            "too many failed logins; try again later", retry_after=exc.retry_after
        ) from None
    # Unknown logins pay for a dummy hash: same status, body and time as a wrong password.
    verified = await runtime.passwords.verify(stored_hash, password)
    if identity is None or stored_hash is None or not verified:
        await throttle.failed(session, memory, attempt, policy)
        runtime.metrics.logins.labels("failed").inc()
        raise AppError(wrong, status=401)
    return _Checked(identity, stored_hash, device, memory, attempt)


@router.post(
    "/v1/token",
    summary="Log in",
    description="The bare JWT as text/plain; JSON when the client accepts application/json. "
    "Sets an HttpOnly device cookie: attempts on the same login that present it are throttled "
    "on their own, so other people's failures cannot lock this client out.",
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/json": {"schema": TokenOut.model_json_schema()},
            }
        },
        **error_responses(400, 401, 413, 429, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": Credentials.model_json_schema()}},
        }
    },
)
async def login(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    raw_login, password = await _read_credentials(request)
    s = runtime.settings
    checked = await _check_password(
        request, runtime, session, raw_login.strip().lower(), password, "invalid login or password"
    )
    identity, stored_hash, device = checked.identity, checked.stored_hash, checked.device
    memory, attempt = checked.memory, checked.attempt
    runtime.metrics.logins.labels("ok").inc()
    new_hash = None
    if stored_hash and runtime.passwords.needs_rehash(stored_hash):
        new_hash = await runtime.passwords.hash(password)  # before the write transaction
    cookie = await _record_success(session, memory, attempt, s, identity.user_id, device, new_hash)
    token = runtime.token_issuer().issue(identity)
    response: Response
    if "application/json" in request.headers.get("accept", ""):
        out = TokenOut(
            access_token=token,
            token_type="Bearer",  # noqa: S106 - a scheme name, not a secret
            expires_in=runtime.token_issuer().ttl,
        )
        response = JSONResponse(out.model_dump(), headers={"Cache-Control": "no-store"})
    else:
        response = PlainTextResponse(token, headers={"Cache-Control": "no-store"})
    if cookie is not None:
        response.set_cookie(
            devices.COOKIE,
            cookie,
            max_age=s.login_device_lifetime_seconds,
            path=devices.COOKIE_PATH,
            # The scheme the client used; behind a trusted proxy uvicorn takes it from
            # X-Forwarded-Proto.
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
    return response


@router.get(
    "/v1/user",
    response_model=UserInfo,
    summary="The caller's account",
    responses=error_responses(401),
    openapi_extra=BEARER_REQUIRED,
)
async def me(request: Request) -> Response:
    # No dependencies on the hottest route: solving one cost FastAPI 9 µs of 82 (in process).
    identity = await authenticate(request, account_check=False)
    runtime = runtime_of(request)
    # The account query is the existence check: a deleted account's token gets a 401 here too.
    account = await runtime.directory.account(identity.user_id)
    if account is None:
        raise Unauthorized("account no longer exists")
    info = UserInfo(
        id=account.id,
        login=account.login,
        created_at=account.created_at,
        images=account.images,
        bytes=account.bytes,
    )
    # Serialized here: FastAPI would validate the model it was just built from a second time.
    return Response(info.model_dump_json(), media_type="application/json")


@router.get(
    "/v1/token/validation",
    summary="Check a token (for a gateway's auth_request)",
    description="200 with X-User-Id and X-User-Login for a valid token; 401 for anything else.",
    responses=error_responses(401),
    openapi_extra=BEARER_REQUIRED,
)
async def validate(request: Request) -> JSONResponse:
    identity = await authenticate(request, account_check=True)
    return JSONResponse(
        {"id": identity.user_id, "login": identity.login},
        headers={"X-User-Id": identity.user_id, "X-User-Login": identity.login},
    )


@router.get("/.well-known/jwks.json", summary="Public keys that verify tokens")
async def jwks(runtime: RuntimeDep) -> JSONResponse:
    return JSONResponse(runtime.verifier.jwks(), headers={"Cache-Control": "public, max-age=300"})


class PasswordConfirmation(BaseModel):
    password: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


async def _read_password(request: Request) -> str:
    """The ``password`` of a JSON body: 400 for a body that is not JSON, 401 when absent."""
    raw = await request.body()
    body: Any = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON body {"password": "..."}')
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise AppError("password required to delete the account", status=401)
    if len(password) > MAX_PASSWORD_LENGTH:  # no account can have it: not a guess
        raise BadRequest(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if not is_valid_unicode(password):
        raise BadRequest("password must be valid Unicode text (no lone surrogates)")
    return password


@router.delete(
    "/v1/user",
    status_code=204,
    summary="Delete the caller's account and all its images",
    description="Needs the account's password in the body, checked and throttled as a login "
    "is (a wrong one counts as a failed login). Answers 204 once the account and its image "
    "records are gone; the image bytes are removed in the background within seconds, and "
    "the account's tokens stop working at once.",
    responses={204: {"description": "Deleted"}, **error_responses(400, 401, 413, 429, 503)},
    openapi_extra={
        **BEARER_REQUIRED,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PasswordConfirmation.model_json_schema()}},
        },
    },
)
async def delete_me(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    identity = await authenticate(request, account_check=True)
    password = await _read_password(request)
    checked = await _check_password(
        request, runtime, session, identity.login, password, "wrong password"
    )
    user = await session.get(User, identity.user_id)
    if user is None or checked.identity.user_id != identity.user_id:
        raise Unauthorized("account no longer exists")
    # The right password clears the login's failures, in the deletion's transaction.
    await throttle.succeeded(session, checked.memory, checked.attempt)
    try:
        await delete_account(session, user, source=runtime.settings.event_source)
    except LookupError:  # deleted by a concurrent request
        raise Unauthorized("account no longer exists") from None
    return Response(status_code=204)
