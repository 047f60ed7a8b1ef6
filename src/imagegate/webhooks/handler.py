"""The event handler (registered under "*") that queues the event for its owner's webhooks."""

from __future__ import annotations

from sqlalchemy import select

from imagegate.db.models import Webhook
from imagegate.db.types import utcnow
from imagegate.events.envelope import Event
from imagegate.events.handlers import HandlerContext
from imagegate.webhooks import deliveries
from imagegate.webhooks.delivery import notify


async def queue_deliveries(event: Event, ctx: HandlerContext) -> None:
    """One pending delivery per webhook of the event's owner that subscribes to its type.

    Idempotent: a delivery is unique per (webhook, event), so the same event dispatched twice
    queues nothing more. The delivery loop sends them; this returns as soon as they are saved.
    """
    async with ctx.sessions() as session:
        webhooks = list(
            await session.scalars(select(Webhook).where(Webhook.user_id == event.owner_id))
        )
        matching = [w for w in webhooks if deliveries.subscribed(w, event.type)]
        if not matching:
            return
        await deliveries.enqueue(
            session,
            matching,
            event_id=event.id,
            event_type=event.type,
            payload=event.to_json().decode("utf-8"),
            now=utcnow(),
        )
        await session.commit()
    notify()
