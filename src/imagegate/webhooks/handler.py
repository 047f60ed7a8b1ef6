"""The event handler (registered under "*") that queues the event for its owner's webhooks."""

from __future__ import annotations

from sqlalchemy import select

from imagegate.db.models import Webhook
from imagegate.db.types import utcnow
from imagegate.events.envelope import Event, EventType
from imagegate.events.handlers import HandlerContext
from imagegate.webhooks import deliveries
from imagegate.webhooks.delivery import local_loop, notify


async def queue_deliveries(event: Event, ctx: HandlerContext) -> None:
    """One pending delivery per webhook of the event's owner that subscribes to its type and
    existed when the event happened.

    Idempotent: a delivery is unique per (webhook, event), so the same event dispatched twice
    queues nothing more. Returns as soon as they are saved. This process's delivery loop, when
    it has room, gets them already claimed and sends them at once (a claim would be one more
    transaction per event); the others are due now for any loop. ``account.deleted`` also
    closes the account's webhooks: they are removed once their deliveries are finished.
    """
    now = utcnow()
    loop = local_loop()
    async with ctx.sessions() as session:
        webhooks = (
            await session.execute(
                select(Webhook.id, Webhook.url, Webhook.secret, Webhook.events).where(
                    Webhook.user_id == event.owner_id, Webhook.created_at <= event.time
                )
            )
        ).all()
        if event.type == EventType.ACCOUNT_DELETED:
            await deliveries.close_webhooks(session, event.owner_id, now=now)
        matching = [w for w in webhooks if deliveries.subscribed(w, event.type)]
        if not matching:
            await session.commit()
            return
        held = await deliveries.enqueue(
            session,
            matching,
            event_id=event.id,
            event_type=event.type,
            payload=event.to_json().decode("utf-8"),
            now=now,
            hold=loop.hold([w.id for w in matching], now) if loop is not None else None,
        )
        await session.commit()
    if loop is not None and held:
        loop.hand_over(held)
    if len(held) < len(matching):
        notify()
