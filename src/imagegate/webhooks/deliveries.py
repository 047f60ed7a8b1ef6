"""The webhook tables' queries: webhooks, the delivery queue, and the retry schedule.

Callers own the session and commit, except where a function says it commits (the claim,
which must be short and visible to other processes at once).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, cast

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db import queries
from imagegate.db.models import User, Webhook, WebhookDelivery

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

# Standard Webhooks / Svix's schedule as multiples of the first delay: with the default 5 s,
# retries come 5 s, 5 min, 30 min, 2 h, 5 h and 10 h after each failure, then every 10 h,
# until the retry window (24 h by default) after the first attempt is over.
RETRY_MULTIPLES: tuple[int, ...] = (1, 60, 360, 1440, 3600, 7200)
PER_WEBHOOK = 4  # attempts in flight to one webhook per process
_DELIVERIES = cast(Table, WebhookDelivery.__table__)


def retry_delay(failures: int, base_seconds: float) -> float:
    """Seconds to wait after the ``failures``-th failed attempt (1 = the first)."""
    index = min(max(failures, 1), len(RETRY_MULTIPLES)) - 1
    return base_seconds * RETRY_MULTIPLES[index]


def next_attempt(
    first_attempt: datetime,
    failures: int,
    now: datetime,
    *,
    base_seconds: float,
    window_seconds: float,
) -> datetime | None:
    """When to try again after a failure at ``now``, or None when the retry window (counted
    from the first attempt) is over. The last retry is moved up to the window's end, so a
    delivery is tried for the whole window rather than up to one long delay short of it."""
    deadline = first_attempt + timedelta(seconds=window_seconds)
    if now >= deadline:
        return None
    return min(now + timedelta(seconds=retry_delay(failures, base_seconds)), deadline)


# --- webhooks ---------------------------------------------------------------------------


class Subscription(Protocol):
    """What queueing a delivery needs of a webhook (a :class:`Webhook` or a row of its columns)."""

    @property
    def id(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def events(self) -> str | None: ...


def encode_events(events: Sequence[str] | None) -> str | None:
    return None if events is None else json.dumps(list(events))


def decode_events(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return [str(v) for v in value] if isinstance(value, list) else None


def subscribed(webhook: Subscription, event_type: str) -> bool:
    """Whether ``webhook`` wants events of ``event_type`` (no list: every type)."""
    events = decode_events(webhook.events)
    return events is None or event_type in events


async def lock_user(session: AsyncSession, user_id: str) -> bool:
    """Lock the user's row for this transaction (PostgreSQL; SQLite has one writer anyway), so
    concurrent registrations of one user's webhooks are counted one after the other. False
    when the account is gone."""
    found = await session.scalar(select(User.id).where(User.id == user_id).with_for_update())
    return found is not None


async def count_webhooks(session: AsyncSession, user_id: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Webhook).where(Webhook.user_id == user_id)
    )
    return int(count or 0)


async def user_webhooks(session: AsyncSession, user_id: str) -> list[Webhook]:
    """The user's webhooks, oldest first."""
    rows = await session.scalars(
        select(Webhook).where(Webhook.user_id == user_id).order_by(Webhook.created_at, Webhook.id)
    )
    return list(rows)


async def user_webhook(session: AsyncSession, user_id: str, webhook_id: str) -> Webhook | None:
    """The webhook if it is this user's, else None (another user's looks like no webhook)."""
    return await session.scalar(
        select(Webhook).where(Webhook.id == webhook_id, Webhook.user_id == user_id)
    )


async def close_webhooks(session: AsyncSession, user_id: str, *, now: datetime) -> None:
    """Mark the webhooks of a deleted account closed (see :func:`prune_closed`)."""
    await session.execute(
        update(Webhook)
        .where(Webhook.user_id == user_id, Webhook.closed_at.is_(None))
        .values(closed_at=now)
        .execution_options(synchronize_session=False)
    )


async def delete_webhook(session: AsyncSession, user_id: str, webhook_id: str) -> bool:
    """Delete the user's webhook; its deliveries go with it (ON DELETE CASCADE), so pending
    ones are never sent. False when the user has no such webhook."""
    result = await session.execute(
        delete(Webhook).where(Webhook.id == webhook_id, Webhook.user_id == user_id)
    )
    return bool(getattr(result, "rowcount", 0))


# --- the delivery queue -----------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A delivery this process holds the lease of, with what sending it needs."""

    id: str
    webhook_id: str
    event_id: str
    payload: str
    attempts: int
    first_attempt_at: datetime | None
    claim: str
    url: str
    secret: str


@dataclass(frozen=True)
class Hold:
    """Deliveries to queue already claimed (by ``claim`` until ``until``) for the webhooks in
    ``webhook_ids``: the process that queues them sends them at once, with no claim of its own."""

    claim: str
    until: datetime
    webhook_ids: frozenset[str]


async def enqueue(
    session: AsyncSession,
    webhooks: Sequence[Subscription],
    *,
    event_id: str,
    event_type: str,
    payload: str,
    now: datetime,
    hold: Hold | None = None,
) -> list[Claimed]:
    """One pending delivery per webhook; one that exists already (the same event dispatched
    again) is left as it is. Those for webhooks in ``hold`` are inserted claimed, and returned
    (the new ones only) for the caller to send once it has committed; the others are due now
    for any delivery loop."""
    if not webhooks:
        return []
    rows = []
    for webhook in webhooks:
        held = hold is not None and webhook.id in hold.webhook_ids
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "webhook_id": webhook.id,
                "event_id": event_id,
                "event_type": event_type,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": hold.until if hold is not None and held else now,
                "claimed_by": hold.claim if hold is not None and held else None,
                "created_at": now,
                "updated_at": now,
            }
        )
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # Core on the table, not the ORM's bulk insert: this runs once per event and webhook.
    inserted = await session.execute(
        insert(_DELIVERIES)
        .on_conflict_do_nothing()
        .returning(_DELIVERIES.c.id, _DELIVERIES.c.webhook_id, _DELIVERIES.c.claimed_by),
        rows,
    )
    by_id = {webhook.id: webhook for webhook in webhooks}
    return [
        Claimed(
            delivery_id,
            webhook_id,
            event_id,
            payload,
            0,
            None,
            claim,
            by_id[webhook_id].url,
            by_id[webhook_id].secret,
        )
        for delivery_id, webhook_id, claim in inserted.all()
        if claim is not None
    ]


async def claim_due(
    session: AsyncSession,
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
    per_webhook: int = PER_WEBHOOK,
    busy: Mapping[str, int] | None = None,
) -> list[Claimed]:
    """Take up to ``limit`` due pending deliveries for one attempt each, and commit.

    At most ``per_webhook`` per webhook counting those ``busy`` already (in flight here), so
    one receiver that hangs until the timeout cannot hold every slot while others wait.
    The claim moves ``next_attempt_at`` to the lease's end and stamps ``claimed_by``: other
    loops no longer see the rows as due, and if this process dies mid-attempt they are due
    again when the lease ends. On PostgreSQL, rows another loop is claiming at this moment are
    skipped (FOR UPDATE SKIP LOCKED) rather than waited for or claimed twice.
    """
    counts = dict(busy or {})
    is_due = and_(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
    candidates = select(WebhookDelivery.id, WebhookDelivery.webhook_id).where(is_due)
    full = [webhook_id for webhook_id, n in counts.items() if n >= per_webhook]
    if full:
        candidates = candidates.where(WebhookDelivery.webhook_id.not_in(full))
    found = await session.execute(
        candidates.order_by(WebhookDelivery.next_attempt_at)
        .limit(limit * per_webhook)
        .with_for_update(skip_locked=True)
    )
    chosen: list[str] = []
    for delivery_id, webhook_id in found.all():
        if counts.get(webhook_id, 0) < per_webhook and len(chosen) < limit:
            counts[webhook_id] = counts.get(webhook_id, 0) + 1
            chosen.append(delivery_id)
    if not chosen:
        await session.commit()
        return []
    claim = str(uuid.uuid4())
    # The conditions again: on SQLite another process may have claimed a row since it was
    # read; it then drops out here rather than being claimed twice.
    claimed_rows = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(chosen), is_due)
        .values(next_attempt_at=lease_until, claimed_by=claim)
        .execution_options(synchronize_session=False)
    )
    if not getattr(claimed_rows, "rowcount", 0):
        await session.commit()
        return []
    rows = await session.execute(
        select(
            WebhookDelivery.id,
            WebhookDelivery.webhook_id,
            WebhookDelivery.event_id,
            WebhookDelivery.payload,
            WebhookDelivery.attempts,
            WebhookDelivery.first_attempt_at,
            Webhook.url,
            Webhook.secret,
        )
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.claimed_by == claim)
    )
    claimed = [
        Claimed(r[0], r[1], r[2], r[3], int(r[4]), r[5], claim, r[6], r[7]) for r in rows.all()
    ]
    await session.commit()
    return claimed


async def record_attempt(
    session: AsyncSession,
    delivery: Claimed,
    *,
    started: datetime,
    now: datetime,
    delivered: bool,
    status: int | None,
    error: str | None,
    base_seconds: float,
    window_seconds: float,
) -> str | None:
    """Record one attempt's outcome and what follows (delivered, retry at, or failed), and
    commit. Returns the new status, or None when the delivery is no longer ours (its webhook
    was deleted, or the lease ran out and another loop took it)."""
    attempts = delivery.attempts + 1
    first = delivery.first_attempt_at or started
    retry_at = None
    if delivered:
        new_status = DELIVERED
    else:
        retry_at = next_attempt(
            first, attempts, now, base_seconds=base_seconds, window_seconds=window_seconds
        )
        new_status = PENDING if retry_at is not None else FAILED
    d = _DELIVERIES.c
    result = await session.execute(
        update(_DELIVERIES)
        .where(d.id == delivery.id, d.claimed_by == delivery.claim)
        .values(
            status=new_status,
            attempts=attempts,
            first_attempt_at=first,
            next_attempt_at=retry_at,
            claimed_by=None,
            last_status=status,
            last_error=error,
            updated_at=now,
        )
    )
    await session.commit()
    return new_status if getattr(result, "rowcount", 0) else None


async def release(session: AsyncSession, claimed: Sequence[Claimed], *, now: datetime) -> None:
    """Hand deliveries whose attempts were cut short (a shutdown) back to the queue, due at
    ``now``, unless someone else holds them by now; commits."""
    for delivery in claimed:
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.claimed_by == delivery.claim,
                WebhookDelivery.status == PENDING,
            )
            .values(next_attempt_at=now, claimed_by=None)
            .execution_options(synchronize_session=False)
        )
    await session.commit()


async def prune_finished(session: AsyncSession, *, before: datetime) -> int:
    """Delete delivered and failed deliveries last updated before ``before``; commits."""
    result = await session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status.in_((DELIVERED, FAILED)), WebhookDelivery.updated_at < before
        )
    )
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_closed(session: AsyncSession, *, before: datetime) -> int:
    """Delete the webhooks closed (their account deleted) before ``before`` that have no
    pending delivery left, with their finished deliveries; commits."""
    pending = select(WebhookDelivery.id).where(
        WebhookDelivery.webhook_id == Webhook.id, WebhookDelivery.status == PENDING
    )
    result = await session.execute(
        delete(Webhook).where(Webhook.closed_at < before, ~pending.exists())
    )
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def deliveries_page(
    session: AsyncSession, webhook_id: str, limit: int, after: tuple[datetime, str] | None
) -> tuple[list[WebhookDelivery], str | None]:
    """A webhook's deliveries, newest first, keyset-paginated on (created_at, id)."""
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if after is not None:
        created, delivery_id = after
        query = query.where(
            or_(
                WebhookDelivery.created_at < created,
                and_(WebhookDelivery.created_at == created, WebhookDelivery.id < delivery_id),
            )
        )
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    rows = list(await session.scalars(query.limit(limit + 1)))
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = queries.encode_cursor(last.created_at, last.id) if last else None
    return rows[:limit], next_cursor
