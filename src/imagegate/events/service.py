"""The event machinery a process runs, chosen from its settings and roles; started and
stopped with the app (``Runtime.start``/``Runtime.stop``).

- embedded (``events=inline``, a process with the uploader role, which holds the storage):
  the :class:`~imagegate.events.inline.InlineDispatcher`;
- ``events=kafka``: the relay role publishes the outbox, the worker role consumes it
  (see the marked spot in :meth:`EventServices.start`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from imagegate.events import outbox
from imagegate.events.handlers import HandlerContext
from imagegate.events.inline import InlineDispatcher
from imagegate.settings import Role

log = logging.getLogger("imagegate.events")

# /healthz reports events "degraded" when the oldest unpublished event is older than this.
DEGRADED_AGE_SECONDS = 60.0


class EventServices:
    """Background event work of one process, and what /metrics and /healthz report of it."""

    def __init__(self, ctx: HandlerContext, engine: AsyncEngine, roles: tuple[Role, ...]) -> None:
        self.ctx = ctx
        self.engine = engine
        self.roles = roles
        self.dispatcher: InlineDispatcher | None = None
        # Run in reverse order by stop(): every started loop registers how to end it here.
        self._stops: list[Callable[[], Awaitable[None]]] = []
        # Extra health verdicts (e.g. the Kafka producer's): each returns None when fine, or
        # a short reason that makes checks["events"] "degraded".
        self.health_probes: list[Callable[[], Awaitable[str | None]]] = []

    def wake(self) -> None:
        """A local commit emitted an event: look at the outbox now, not at the next poll."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def start(self) -> None:
        settings = self.ctx.settings
        inline = settings.events == "inline" and "uploader" in self.roles
        # Webhook deliveries go out from where events are handled: embedded, and the worker.
        # Started first, so stopped last (stops run in reverse): the handlers still running
        # during the shutdown grace may hand it deliveries.
        if inline or "worker" in self.roles:
            from imagegate.webhooks.delivery import DeliveryLoop

            webhook_loop = DeliveryLoop(settings, self.ctx.sessions)
            webhook_loop.start()
            self._stops.append(webhook_loop.stop)
            if self.ctx.variants is not None:
                self.ctx.variants.start_pruning()  # stopped with the maker (Runtime.stop)
        if inline:
            self.dispatcher = InlineDispatcher(self.ctx, self.engine)
            await self.dispatcher.start()
            self._stops.append(self.dispatcher.stop)
        # The relay and worker roles are the Kafka side of events=kafka whatever the setting
        # says: running one means Kafka is in use.
        if "relay" in self.roles:
            from imagegate.events.relay import Relay  # confluent-kafka: only where it is used

            relay = Relay(settings, self.ctx.metrics)
            await relay.start()
            self._stops.append(relay.stop)
            self.health_probes.append(_broker_probe(relay.broker_reachable))
        if "worker" in self.roles:
            from imagegate.events.worker import KafkaWorker

            worker = KafkaWorker(self.ctx)
            await worker.start()
            self._stops.append(worker.stop)
            self.health_probes.append(_broker_probe(worker.broker_reachable))

    async def stop(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            try:
                await stop()
            except Exception as exc:  # stopping must reach every loop
                log.warning("events: error while stopping: %s", exc)

    async def backlog(self) -> outbox.Backlog:
        """The outbox's unpublished depth and oldest age (one query); updates the gauges."""
        async with self.ctx.sessions() as session:
            found = await outbox.backlog(session)
        self.ctx.metrics.outbox_depth.set(found.depth)
        self.ctx.metrics.outbox_oldest_age.set(found.oldest_age_seconds)
        return found

    async def health(self, *, outbox: bool = True) -> tuple[str, list[str]]:
        """("ok" | "degraded", reasons). Degraded means late, not down: the API still works
        and every event is kept in the outbox until it is handled. ``outbox=False``: the
        database is known to be away, so the outbox is not read (it counts as degraded)."""
        reasons: list[str] = []
        if not outbox:
            reasons.append("outbox unreadable: database unavailable")
        else:
            try:
                found = await self.backlog()
                if found.oldest_age_seconds > DEGRADED_AGE_SECONDS:
                    reasons.append(
                        f"{found.depth} events waiting, oldest {found.oldest_age_seconds:.0f} s"
                    )
            except Exception as exc:
                reasons.append(f"outbox unreadable: {exc}")
        for probe in self.health_probes:
            try:
                reason = await probe()
            except Exception as exc:
                reason = str(exc)
            if reason:
                reasons.append(reason)
        return ("degraded" if reasons else "ok"), reasons


def _broker_probe(reachable: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[str | None]]:
    """A health probe from a relay's or worker's broker check (KAFKA-APP)."""

    async def probe() -> str | None:
        return None if await reachable() else "Kafka brokers unreachable"

    return probe
