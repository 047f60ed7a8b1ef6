"""HTTP routes of API keys: create (the key shown once), list, revoke. A person's session only."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from imagegate.db.models import ApiKey
from imagegate.deps import RuntimeDep, SessionDep, SessionIdentity
from imagegate.errors import Conflict, NotFound, Unauthorized, Unprocessable, error_responses
from imagegate.routing import is_uuid
from imagegate.security import apikeys

router = APIRouter(tags=["api keys"])

MAX_NAME = 100
DEFAULT_DAYS = 90


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        StrictStr,
        Field(
            min_length=1, max_length=MAX_NAME, description="What the key is for (shown in lists)"
        ),
    ]
    scopes: Annotated[
        list[StrictStr],
        Field(
            min_length=1,
            max_length=len(apikeys.SCOPES) * 4,
            description="What the key may do: " + ", ".join(apikeys.SCOPES),
        ),
    ]
    expires_in_days: Annotated[
        StrictInt,
        Field(
            ge=1,
            description=f"Lifetime in days (default {DEFAULT_DAYS}; at most the "
            "server's IMAGEGATE_API_KEY_MAX_DAYS, 365 unless changed)",
        ),
    ] = DEFAULT_DAYS


class ApiKeyOut(BaseModel):
    """A key as its owner sees it: never the secret (only in the answer that created it)."""

    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    scopes: list[str]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None = Field(
        description="When the key was last used (to within a minute); null: never"
    )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(
        description="The key (igk_…): shown only here. Send it as `Authorization: Bearer <key>`."
    )


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


def _out(row: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=sorted(apikeys.decode_scopes(row.scopes)),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
    )


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise Unprocessable("name: give the key a name")
    if any(not ch.isprintable() for ch in name):
        raise Unprocessable("name: control characters are not allowed")
    return name


def _check_scopes(scopes: list[str]) -> frozenset[str]:
    for scope in scopes:
        if scope not in apikeys.SCOPES:
            shown = json.dumps(scope)[:80]  # ASCII-escaped: safe to echo
            raise Unprocessable(
                f"scopes: unknown scope {shown}; allowed: {', '.join(apikeys.SCOPES)}"
            )
    return frozenset(scopes)


@router.post(
    "/v1/keys",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    description=(
        "An API key is a Bearer credential for scripts on the image routes, limited to its "
        "scopes (`images:read`: list and read the account's images; `images:write`: upload "
        "and delete). It never manages keys, the password, sessions or the account: those "
        "need a signed-in session (403 with a key). The `key` is shown only in this answer; "
        "the server keeps only its hash. 422 for an unknown scope, a bad name or a lifetime "
        "over the server's maximum; 409 when the account has as many keys as it may."
    ),
    responses=error_responses(400, 401, 403, 409, 413, 422),
)
async def create_key(
    body: ApiKeyIn,
    identity: SessionIdentity,
    runtime: RuntimeDep,
    session: SessionDep,
    response: Response,
) -> ApiKeyCreated:
    response.headers["Cache-Control"] = "no-store"  # the secret: no cache may keep it
    settings = runtime.settings
    name = _check_name(body.name)
    scopes = _check_scopes(body.scopes)
    if body.expires_in_days > settings.api_key_max_days:
        raise Unprocessable(f"expires_in_days: at most {settings.api_key_max_days}")
    try:
        made = await apikeys.create(
            session,
            identity.user_id,
            name,
            scopes,
            body.expires_in_days,
            settings.api_keys_per_user,
        )
    except apikeys.TooManyKeys:
        raise Conflict(
            f"an account may have at most {settings.api_keys_per_user} API keys; revoke one first"
        ) from None
    if made is None:
        raise Unauthorized("account no longer exists")
    row, secret = made
    return ApiKeyCreated(**_out(row).model_dump(), key=secret)


@router.get(
    "/v1/keys",
    response_model=ApiKeyList,
    summary="The caller's API keys (without their secrets)",
    responses=error_responses(401, 403),
)
async def list_keys(identity: SessionIdentity, session: SessionDep) -> ApiKeyList:
    rows = await apikeys.listing(session, identity.user_id)
    return ApiKeyList(items=[_out(r) for r in rows])


@router.delete(
    "/v1/keys/{key_id}",
    status_code=204,
    summary="Revoke one of the caller's API keys",
    description="The key stops working everywhere within a second.",
    responses={204: {"description": "Revoked"}, **error_responses(401, 403, 404)},
)
async def revoke_key(key_id: str, identity: SessionIdentity, session: SessionDep) -> Response:
    if not is_uuid(key_id) or not await apikeys.revoke(session, identity.user_id, key_id):
        raise NotFound("no such API key")
    return Response(status_code=204)
