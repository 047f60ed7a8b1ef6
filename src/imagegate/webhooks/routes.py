"""HTTP routes of webhooks: register, list, delete, and a webhook's deliveries."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from sqlalchemy import exc as sa_exc

from imagegate.db import queries
from imagegate.db.models import Webhook, WebhookDelivery
from imagegate.db.types import utcnow
from imagegate.deps import CurrentIdentity, RuntimeDep, SessionDep
from imagegate.errors import Conflict, NotFound, Unauthorized, Unprocessable, error_responses
from imagegate.events.envelope import ALL_TYPES
from imagegate.routing import is_uuid
from imagegate.webhooks import deliveries, signing, ssrf
from imagegate.webhooks.delivery import MAX_URL_LENGTH, InvalidURL, parse_url

router = APIRouter(tags=["webhooks"])

_EVENTS_DOC = (
    "Event types to receive (" + ", ".join(ALL_TYPES) + "); omitted or null: every type, "
    "including types added later."
)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[
        StrictStr,
        Field(
            max_length=MAX_URL_LENGTH,
            description="http:// or https:// URL that receives the POSTs; it must not resolve "
            "to a loopback, private, link-local or otherwise internal address.",
        ),
    ]
    events: Annotated[
        list[StrictStr] | None, Field(max_length=len(ALL_TYPES) * 4, description=_EVENTS_DOC)
    ] = None


class WebhookOut(BaseModel):
    """A webhook as its owner sees it (the secret only in the answer that created it)."""

    id: str
    url: str
    events: list[str] | None = Field(description="null: every event type")
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="The signing secret (whsec_…): shown only here; verify each delivery's "
        "webhook-signature with it (Standard Webhooks)."
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryOut(BaseModel):
    """One event's delivery to a webhook, and how its attempts went."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    event_id: str = Field(description="The event's id, sent as webhook-id on every attempt")
    event_type: str
    status: str = Field(description="pending, delivered or failed (retries are over)")
    attempts: int
    last_status: int | None = Field(description="HTTP status of the last attempt")
    last_error: str | None = Field(
        description="Why the last attempt failed, with at most 1 KiB of the response body"
    )
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next")


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


def _out(webhook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=webhook.id,
        url=webhook.url,
        events=deliveries.decode_events(webhook.events),
        created_at=webhook.created_at,
    )


def _check_events(events: list[str] | None) -> list[str] | None:
    if events is None:
        return None
    if not events:
        raise Unprocessable("events: give at least one event type, or omit it for every type")
    for event_type in events:
        if event_type not in ALL_TYPES:
            shown = json.dumps(event_type)[:80]  # ASCII-escaped: safe to echo
            raise Unprocessable(
                f"events: unknown event type {shown}; allowed: {', '.join(ALL_TYPES)}"
            )
    return list(dict.fromkeys(events))  # without duplicates, in the caller's order


@router.post(
    "/v1/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Register a webhook",
    description=(
        "Every event of the caller's account of the chosen types is POSTed to `url` as "
        "CloudEvents JSON, signed as the Standard Webhooks specification says (`webhook-id`, "
        "`webhook-timestamp`, `webhook-signature`; `webhook-id` is the event's id, the same "
        "on every attempt) and retried with exponential backoff until a 2xx answers, for 24 "
        "hours by default. Redirects are not followed. The `secret` is shown only in this "
        "answer. 422 for an unknown event type, a URL that is not http(s), has user info, does "
        "not resolve, or resolves to a loopback, private, link-local, cloud-metadata or other "
        "internal address; 409 when the account has as many webhooks as it may."
    ),
    responses=error_responses(400, 401, 409, 413, 422, 503),
)
async def create_webhook(
    body: WebhookIn,
    identity: CurrentIdentity,
    runtime: RuntimeDep,
    session: SessionDep,
    response: Response,
) -> WebhookCreated:
    response.headers["Cache-Control"] = "no-store"  # the signing secret: no cache may keep it
    settings = runtime.settings
    events = _check_events(body.events)
    try:
        target = parse_url(body.url)
    except InvalidURL as exc:
        raise Unprocessable(f"url: {exc}") from exc
    allowed = ssrf.allowed_networks(settings.webhook_allowed_networks)
    try:
        await ssrf.resolve(
            target.host, target.port, allowed, time_limit=settings.webhook_timeout_seconds
        )
    except ssrf.AddressRefused as exc:
        raise Unprocessable(f"url: {exc.message}") from exc
    if not await deliveries.lock_user(session, identity.user_id):
        raise Unauthorized("account no longer exists")
    limit = settings.webhooks_per_user
    if await deliveries.count_webhooks(session, identity.user_id) >= limit:
        raise Conflict(f"an account may have at most {limit} webhooks; delete one first")
    webhook = Webhook(
        id=str(uuid.uuid4()),
        user_id=identity.user_id,
        url=body.url,
        events=deliveries.encode_events(events),
        secret=signing.new_secret(),
        created_at=utcnow(),
    )
    session.add(webhook)
    try:
        await session.commit()
    except sa_exc.StatementError as exc:
        exc.hide_parameters = True  # they hold the new secret: never in a log line
        raise
    return WebhookCreated(**_out(webhook).model_dump(), secret=webhook.secret)


@router.get(
    "/v1/webhooks",
    response_model=WebhookList,
    summary="The caller's webhooks (without their secrets)",
    responses=error_responses(401),
)
async def list_webhooks(identity: CurrentIdentity, session: SessionDep) -> WebhookList:
    webhooks = await deliveries.user_webhooks(session, identity.user_id)
    return WebhookList(items=[_out(w) for w in webhooks])


@router.delete(
    "/v1/webhooks/{webhook_id}",
    status_code=204,
    summary="Delete one of the caller's webhooks",
    description="Its pending deliveries are not sent any more; its delivery log goes too.",
    responses=error_responses(401, 404),
)
async def delete_webhook(
    webhook_id: str, identity: CurrentIdentity, session: SessionDep
) -> Response:
    if not is_uuid(webhook_id) or not await deliveries.delete_webhook(
        session, identity.user_id, webhook_id
    ):
        raise NotFound("no such webhook")
    await session.commit()
    return Response(status_code=204)


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    summary="A webhook's deliveries, newest first",
    responses=error_responses(401, 404, 422),
)
async def list_deliveries(
    webhook_id: str,
    identity: CurrentIdentity,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> DeliveryPage:
    if not is_uuid(webhook_id) or not await deliveries.user_webhook(
        session, identity.user_id, webhook_id
    ):
        raise NotFound("no such webhook")
    try:
        after = queries.decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise Unprocessable("cursor: not a cursor from this listing") from exc
    rows, next_cursor = await deliveries.deliveries_page(session, webhook_id, limit, after)
    return DeliveryPage(items=[_delivery(d) for d in rows], next_cursor=next_cursor)


def _delivery(row: WebhookDelivery) -> DeliveryOut:
    out = DeliveryOut.model_validate(row)
    if row.status != deliveries.PENDING:
        out.next_attempt_at = None
    return out
