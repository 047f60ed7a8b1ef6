"""HTTP routes of the security service: register, login, sessions (refresh, logout, password
change), caller info, token validation, JWKS."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from sqlalchemy import exc as sa_exc
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db import queries
from imagegate.db.models import LoginThrottle, User
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
    Forbidden,
    TooManyRequests,
    Unauthorized,
    error_responses,
)
from imagegate.jsonbody import parse_json
from imagegate.runtime import Runtime
from imagegate.security import devices, throttle
from imagegate.security import sessions as login_sessions
from imagegate.security.accounts import create_account, delete_account
from imagegate.security.passwords import (
    LOGIN_RE,
    MAX_PASSWORD_LENGTH,
    check_password_policy,
    is_valid_unicode,
)
from imagegate.security.tokens import Identity
from imagegate.settings import Settings

router = APIRouter(tags=["security"])
log = logging.getLogger("imagegate")


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
    refresh_token: str | None = Field(
        None,
        description="Exchanged at POST /v1/token/refresh for new tokens; absent when it travels "
        "as a cookie (?refresh=cookie) or could not be recorded.",
    )
    refresh_expires_in: int | None = Field(
        None, description="Seconds the refresh token lasts unused (each refresh renews it)."
    )


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
    verified_hash: str,
    new_hash: str | None,
    refreshable: bool,
) -> tuple[str | None, str | None, login_sessions.Issued | None]:
    """A successful login's bookkeeping, in one transaction: the throttle's keys, a new device
    cookie replacing the one presented, a rehashed password, the session it starts. Returns
    the cookie, the session's id and its refresh token. Best effort: when the database cannot
    be written the login still succeeds, without a new cookie nor a session (its access token
    then carries none; it cannot be refreshed)."""
    lifetime = settings.login_device_lifetime_seconds
    now = throttle.clock()
    try:
        # The password verified is still the account's, checked under the account's lock: a
        # password change committed while this login hashed ends every session; a session
        # started after it from the old password (or a rehash of the old one) must not be.
        if await queries.password_hash_locked(session, user_id) != verified_hash:
            await session.rollback()
            raise AppError("invalid login or password", status=401)  # as a wrong password
        await throttle.succeeded(session, memory, attempt)
        token = None
        if lifetime > 0:
            token = await devices.issue(session, user_id, now, lifetime, device)
        if new_hash is not None:
            await queries.set_password_hash(session, user_id, new_hash)
        session_id, issued = await login_sessions.start(
            session,
            user_id,
            login_sessions.Lifetimes.from_settings(settings),
            now,
            source=settings.event_source,
            refreshable=refreshable,
        )
        await session.commit()
    except sa_exc.DBAPIError as exc:
        if not throttle.cannot_write(exc):
            raise
        await session.rollback()
        throttle.warn_unwritable("cannot record a successful login (it still succeeds)", exc)
        return None, None, None
    return token, session_id, issued


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
    signed_in: Identity | None = None,
) -> _Checked:
    """The one password check (login, and confirming an account's deletion): throttled per
    login and per address before the password is checked; a wrong password stays counted and
    answers 401 ``wrong``; 429 while throttled. ``signed_in``: the caller's session confirms
    its own password (password change, deletion) on that session's own budget, so strangers
    failing logins on the name cannot lock the signed-in person out of these."""
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
    elif signed_in is not None:
        account_key = throttle.session_key(signed_in.session_id or f"user:{signed_in.user_id}")
        address_key = None
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


_REFRESH_MODE_DOC = (
    "`cookie`: the refresh token travels as an HttpOnly, Secure, SameSite=Strict cookie "
    "limited to /v1/token (for browsers), not in the body"
)


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _refresh_mode(request: Request) -> Literal["body", "cookie"]:
    """Where a new refresh token goes (``?refresh=``). Setting the cookie needs the same CSRF
    proof as using it: a cross-site form could otherwise sign the browser into another
    account (login CSRF), replacing the person's own session."""
    mode = request.query_params.get("refresh", "body")
    if mode not in ("body", "cookie"):
        raise BadRequest("refresh must be body or cookie")
    if mode == "cookie":
        _check_csrf(request)
        return "cookie"
    return "body"


# The ``refresh`` query parameter of the routes that start a session, for the OpenAPI document.
_REFRESH_PARAMETER: dict[str, Any] = {
    "name": "refresh",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["body", "cookie"], "default": "body"},
    "description": _REFRESH_MODE_DOC,
}


def _set_refresh_cookie(response: Response, issued: login_sessions.Issued, now: float) -> None:
    response.set_cookie(
        login_sessions.REFRESH_COOKIE,
        issued.refresh_token,
        max_age=issued.max_age(now),
        path=login_sessions.COOKIE_PATH,
        secure=True,  # a long-lived credential: never over plain HTTP (localhost excepted)
        httponly=True,
        samesite="strict",
    )


def _clear_refresh_cookie(response: Response) -> None:
    response.delete_cookie(
        login_sessions.REFRESH_COOKIE,
        path=login_sessions.COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )


def _tokens_response(
    runtime: Runtime,
    identity: Identity,
    issued: login_sessions.Issued | None,
    mode: Literal["body", "cookie"],
    now: float,
) -> JSONResponse:
    """The JSON answer of a login, a refresh or a password change: a new access token, and the
    session's refresh token in the body or (``cookie``) as the cookie."""
    issuer = runtime.token_issuer()
    out = TokenOut(
        access_token=issuer.issue(identity),
        token_type="Bearer",  # noqa: S106 - a scheme name, not a secret
        expires_in=issuer.ttl,
    )
    if issued is not None:
        out.refresh_expires_in = issued.max_age(now)
        if mode == "body":
            out.refresh_token = issued.refresh_token
    response = JSONResponse(
        out.model_dump(exclude_none=True), headers={"Cache-Control": "no-store"}
    )
    if issued is not None and mode == "cookie":
        _set_refresh_cookie(response, issued, now)
    return response


@router.post(
    "/v1/token",
    summary="Log in",
    description="The bare JWT as text/plain; JSON when the client accepts application/json, "
    "with a refresh token (POST /v1/token/refresh) that keeps the session going: 30 days "
    "unused at most, 90 days in all. `?refresh=cookie` sends the refresh token as an "
    "HttpOnly cookie instead (browsers). Each login starts a session, which POST /v1/logout "
    "ends. Sets an HttpOnly device cookie: attempts on the same login that present it are "
    "throttled on their own, so other people's failures cannot lock this client out.",
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
        "parameters": [_REFRESH_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": Credentials.model_json_schema()}},
        },
    },
)
async def login(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    mode = _refresh_mode(request)
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
    # The reference design's plain answer has no room for a refresh token: unless it goes in a
    # cookie, that session ends with its access token.
    refreshable = _wants_json(request) or mode == "cookie"
    cookie, session_id, issued = await _record_success(
        session, memory, attempt, s, identity.user_id, device, stored_hash, new_hash, refreshable
    )
    now = throttle.clock()
    identity = Identity(identity.user_id, identity.login, session_id=session_id)
    response: Response
    if _wants_json(request):
        response = _tokens_response(runtime, identity, issued, mode, now)
    else:
        token = runtime.token_issuer().issue(identity)
        response = PlainTextResponse(token, headers={"Cache-Control": "no-store"})
        if issued is not None and mode == "cookie":
            _set_refresh_cookie(response, issued, now)
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
    # The account query is the token check: a deleted account's token, or one of a session
    # that ended, gets a 401 here too.
    account = await runtime.directory.account_of(identity)
    if isinstance(account, str):
        raise Unauthorized(account)
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
    # Cached for less than a new key's activation delay: a verifier elsewhere that honours
    # the cache knows a key before any token it signed arrives.
    age = max(1, int(runtime.settings.jwt_key_activation_seconds) // 2)
    return JSONResponse(
        runtime.verifier.jwks(), headers={"Cache-Control": f"public, max-age={age}"}
    )


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
    description="Needs the account's password in the body, checked as a login is and throttled "
    "on the session's own budget. Answers 204 once the account and its image "
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
    identity = await authenticate(request, account_check=True, session_only=True)
    password = await _read_password(request)
    checked = await _check_password(
        request, runtime, session, identity.login, password, "wrong password", identity
    )
    user = await session.get(User, identity.user_id)
    if user is None or checked.identity.user_id != identity.user_id:
        raise Unauthorized("account no longer exists")
    # The right password clears the login's failures, in the deletion's transaction.
    await throttle.succeeded(session, checked.memory, checked.attempt)
    try:
        # Its sessions and refresh tokens go with the row (cascade); account.deleted stops
        # its access tokens on every replica.
        await delete_account(session, user, source=runtime.settings.event_source)
    except LookupError:  # deleted by a concurrent request
        raise Unauthorized("account no longer exists") from None
    response = Response(status_code=204)
    _clear_refresh_cookie(response)
    return response


# --- sessions: refresh, revoke, logout, password change ------------------------------------

BAD_REFRESH = "invalid or expired refresh token"  # every refusal of a refresh token says this
NEEDS_CSRF_HEADER = (
    "a request authenticated by the refresh cookie needs the X-Requested-With header "
    "(cross-site forms cannot send it)"
)
CROSS_SITE = "cross-site request refused"
_REFRESH_SHAPE = 'expected a JSON body {"refresh_token": "..."} (or none: the cookie)'


class RefreshIn(BaseModel):
    refresh_token: StrictStr | None = Field(
        None, description="Omitted: the refresh cookie (?refresh=cookie at login) is used."
    )


def _host_name(value: str) -> str | None:
    try:
        return urlsplit(f"//{value}").hostname
    except ValueError:
        return None


def _check_csrf(request: Request) -> None:
    """A cookie travels with any request the browser makes, including a cross-site form's;
    a custom header does not (it would need a CORS preflight, which nothing here allows).
    Where the browser says where the request comes from, it must be this site."""
    if not request.headers.get("x-requested-with", "").strip():
        raise Forbidden(NEEDS_CSRF_HEADER)
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise Forbidden(CROSS_SITE)
    origin = request.headers.get("origin")
    if origin is not None:
        # Host names only: the gateway passes its own port upstream, never the client's.
        own = _host_name(request.headers.get("host", ""))
        try:
            theirs = urlsplit(origin).hostname if origin != "null" else None
        except ValueError:
            theirs = None
        if theirs is None or own is None or theirs != own:
            raise Forbidden(CROSS_SITE)


async def _refresh_token_of(request: Request) -> tuple[str | None, bool]:
    """The refresh token presented (None: none) and whether it came from the cookie; 400 for
    a body that is not ``{"refresh_token": "..."}``, 403 for a cookie without CSRF proof."""
    raw = await request.body()
    token: Any = None
    if raw.strip():
        try:
            body: Any = parse_json(raw)
        except BadRequest as exc:  # invalid UTF-8 or JSON, deep nesting, lone surrogates
            raise BadRequest(f"{exc.message}; {_REFRESH_SHAPE}") from exc
        if not isinstance(body, dict) or set(body) - {"refresh_token"}:
            raise BadRequest(_REFRESH_SHAPE)
        token = body.get("refresh_token")
        if token is not None and not isinstance(token, str):
            raise BadRequest("refresh_token must be a string")
    if token is not None:
        return token, False
    cookie = request.cookies.get(login_sessions.REFRESH_COOKIE)
    if cookie is None:
        return None, False
    _check_csrf(request)
    return cookie, True


def _refresh_policy(settings: Settings) -> throttle.ThrottlePolicy:
    return throttle.ThrottlePolicy(
        settings.refresh_max_failures,
        settings.login_window_seconds,
        settings.login_lockout_seconds,
        settings.login_lockout_max_seconds,
    )


async def _give_back(session: AsyncSession, memory: throttle.MemoryThrottle, key: str) -> None:
    """A good refresh token gives its address back the attempt it reserved (so a busy address
    of many clients is not throttled by its own good refreshes); nothing is cleared (a client
    that also holds a good token cannot reset its count of guesses). The caller commits."""
    memory.record_success("", [key])
    await session.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key == key, LoginThrottle.failures > 0)
        .values(failures=LoginThrottle.failures - 1)
    )


_REFRESH_BODY = {
    "required": False,
    "content": {"application/json": {"schema": RefreshIn.model_json_schema()}},
}
_COOKIE_NOTE = (
    " With the refresh cookie instead of a body, the request must carry an `X-Requested-With` "
    "header and, when the browser sends `Origin`/`Sec-Fetch-Site`, come from this site (403 "
    "otherwise)."
)


@router.post(
    "/v1/token/refresh",
    response_model=TokenOut,
    summary="Refresh: a new access token and a new refresh token",
    description="Exchanges a refresh token for a new access token and a new refresh token "
    "(rotation: the one presented is used up). Presenting a refresh token that was already "
    "used ends its whole session (someone else has it). Every refusal is the same 401; bad "
    "tokens are throttled per client address (429 + Retry-After)." + _COOKIE_NOTE,
    responses=error_responses(400, 401, 403, 413, 429, 503),
    openapi_extra={"requestBody": _REFRESH_BODY},
)
async def refresh(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    token, from_cookie = await _refresh_token_of(request)
    if token is None or not login_sessions.well_formed(token):
        # No token, or one no session can have: the same answer, but not a guess worth
        # counting (nothing is looked up).
        raise Unauthorized(BAD_REFRESH)
    s = runtime.settings
    policy = _refresh_policy(s)
    memory = _memory_throttle(request)
    # Its own key per address: a login's failures and a refresh's do not share a budget.
    key = "refresh:" + throttle.address_key(client_address(request) or "-")
    try:
        attempt = await throttle.begin(session, memory, key, None, policy)
    except throttle.Throttled as exc:
        raise TooManyRequests(
            "too many invalid refresh tokens; try again later", retry_after=exc.retry_after
        ) from None
    now = throttle.clock()
    lifetimes = login_sessions.Lifetimes.from_settings(s)
    try:
        identity, issued = await login_sessions.rotate(
            session, token, lifetimes, now, source=s.event_source
        )
        await _give_back(session, memory, key)
        await session.commit()
    except login_sessions.RefreshRefused as exc:
        await session.rollback()
        await throttle.failed(session, memory, attempt, policy)
        log.info("refresh refused: %s", exc.reason)
        raise Unauthorized(BAD_REFRESH) from None
    return _tokens_response(runtime, identity, issued, "cookie" if from_cookie else "body", now)


@router.post(
    "/v1/token/revoke",
    status_code=204,
    summary="End the session of a refresh token",
    description="Ends the session the refresh token (in the body, or the cookie) belongs to, "
    "as POST /v1/logout does for an access token: for a browser that holds only the cookie. "
    "204 whether or not the token was valid (RFC 7009); the cookie is cleared." + _COOKIE_NOTE,
    responses={204: {"description": "Ended"}, **error_responses(400, 403, 413, 503)},
    openapi_extra={"requestBody": _REFRESH_BODY},
)
async def revoke(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    token, _ = await _refresh_token_of(request)
    found = await login_sessions.session_of_token(session, token) if token else None
    if found is not None:
        user_id, session_id = found
        await login_sessions.revoke(
            session,
            user_id,
            [session_id],
            throttle.clock(),
            source=runtime.settings.event_source,
            reason=login_sessions.LOGOUT,
        )
        await session.commit()
    response = Response(status_code=204)
    _clear_refresh_cookie(response)
    return response


@router.post(
    "/v1/logout",
    status_code=204,
    summary="Log out: end this session (?all=true: every session of the account)",
    description="Ends the caller's session: its refresh token and every access token of it are "
    "refused from now on, by every replica within a second. `?all=true` ends every session "
    "of the account. Not with an API key (403).",
    responses={204: {"description": "Logged out"}, **error_responses(401, 403, 503)},
    openapi_extra=BEARER_REQUIRED,
)
async def logout(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    all_sessions: Annotated[
        bool, Query(alias="all", description="End every session of the account")
    ] = False,
) -> Response:
    identity = await authenticate(request, account_check=True, session_only=True)
    source, now = runtime.settings.event_source, throttle.clock()
    if all_sessions or identity.session_id is None:
        # A token from before sessions: the account's cut-off is the only way to end it.
        await login_sessions.end_all(
            session,
            identity.user_id,
            now,
            source=source,
            reason=login_sessions.LOGOUT_ALL if all_sessions else login_sessions.LOGOUT,
        )
    else:
        await login_sessions.revoke(
            session,
            identity.user_id,
            [identity.session_id],
            now,
            source=source,
            reason=login_sessions.LOGOUT,
        )
    await session.commit()
    response = Response(status_code=204)
    _clear_refresh_cookie(response)
    return response


class PasswordChange(BaseModel):
    current_password: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
    new_password: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


_PASSWORD_SHAPE = 'expected a JSON body {"current_password": "...", "new_password": "..."}'  # noqa: S105 - a message


async def _read_password_change(request: Request) -> tuple[str, str]:
    try:
        body: Any = parse_json(await request.body())
    except BadRequest as exc:
        raise BadRequest(f"{exc.message}; {_PASSWORD_SHAPE}") from exc
    if not isinstance(body, dict) or set(body) - {"current_password", "new_password"}:
        raise BadRequest(_PASSWORD_SHAPE)
    current, new = body.get("current_password"), body.get("new_password")
    if not isinstance(current, str) or not isinstance(new, str):
        raise BadRequest(_PASSWORD_SHAPE)
    if not current:
        raise AppError("current_password required", status=401)
    if len(current) > MAX_PASSWORD_LENGTH:  # no account can have it: not a guess
        raise BadRequest(f"current_password must be at most {MAX_PASSWORD_LENGTH} characters")
    if not is_valid_unicode(current):
        raise BadRequest("current_password must be valid Unicode text (no lone surrogates)")
    return current, new


@router.put(
    "/v1/user/password",
    response_model=TokenOut,
    summary="Change the password; ends every other session",
    description="Checks `current_password` as a login does, throttled on the session's own "
    "budget (401, then 429 + Retry-After), applies the registration policy to "
    "`new_password` (422), then ends every session of the account and every access token "
    "issued before, and answers like a JSON login with the tokens of a new session "
    "(`?refresh=cookie`: the refresh token as the cookie). Not with an API key (403).",
    responses=error_responses(400, 401, 403, 413, 422, 429, 503),
    openapi_extra={
        **BEARER_REQUIRED,
        "parameters": [_REFRESH_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PasswordChange.model_json_schema()}},
        },
    },
)
async def change_password(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    identity = await authenticate(request, account_check=True, session_only=True)
    mode = _refresh_mode(request)
    current, new = await _read_password_change(request)
    s = runtime.settings
    check_password_policy(new, identity.login, s.password_min_length)  # 422, not a guess
    checked = await _check_password(
        request, runtime, session, identity.login, current, "wrong password", identity
    )
    if checked.identity.user_id != identity.user_id:  # the login now names another account
        raise Unauthorized("account no longer exists")
    new_hash = await runtime.passwords.hash(new)  # before the write transaction
    now = throttle.clock()
    await throttle.succeeded(session, checked.memory, checked.attempt)
    if await session.get(User, identity.user_id) is None:
        raise Unauthorized("account no longer exists")
    await queries.set_password_hash(session, identity.user_id, new_hash)
    await login_sessions.end_all(
        session,
        identity.user_id,
        now,
        source=s.event_source,
        reason=login_sessions.PASSWORD_CHANGED,
    )
    session_id, issued = await login_sessions.start(
        session,
        identity.user_id,
        login_sessions.Lifetimes.from_settings(s),
        now,
        source=s.event_source,
    )
    await session.commit()
    log.info("password changed for %s; every other session ended", identity.login)
    fresh = Identity(identity.user_id, identity.login, session_id=session_id)
    return _tokens_response(runtime, fresh, issued, mode, now)
