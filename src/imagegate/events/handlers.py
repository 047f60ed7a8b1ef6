"""What reacting to an event looks like: a handler, its context, and ``dispatch``.

A handler is ``async def handler(event, ctx) -> None``. Raising means "not done": the
event is offered again (the inline dispatcher retries, the Kafka worker does not commit the
offset), so every handler must be idempotent — the same event twice changes nothing.
The handlers of each type are listed in one place, :mod:`imagegate.events.registry`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.events.envelope import Event
from imagegate.metrics import Metrics
from imagegate.settings import Settings
from imagegate.storage.base import Storage

if TYPE_CHECKING:
    from imagegate.variants.maker import VariantMaker

log = logging.getLogger("imagegate.events")

ANY_TYPE = "*"  # the registry key whose handlers see every event


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may use: the process's settings, database, storage, metrics and its
    variant maker (None in processes that handle no events)."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    storage: Storage
    metrics: Metrics
    variants: VariantMaker | None = None


Handler = Callable[[Event, HandlerContext], Awaitable[None]]
Handlers = Mapping[str, Sequence[Handler]]


def handlers_for(event_type: str, handlers: Handlers | None = None) -> list[Handler]:
    """The handlers ``dispatch`` runs for ``event_type``, in order: its own, then "*"."""
    if handlers is None:
        from imagegate.events.registry import HANDLERS  # the registry imports the handlers

        handlers = HANDLERS
    return [*handlers.get(event_type, ()), *handlers.get(ANY_TYPE, ())]


async def dispatch(event: Event, ctx: HandlerContext, handlers: Handlers | None = None) -> None:
    """Run every handler of ``event`` in order; raises (after counting the failure) if one
    does, so the caller offers the event again later. ``handlers`` defaults to the
    registry's."""
    try:
        for handler in handlers_for(event.type, handlers):
            await handler(event, ctx)
    except Exception:
        ctx.metrics.events_handled.labels(event.type, "error").inc()
        raise
    ctx.metrics.events_handled.labels(event.type, "ok").inc()
