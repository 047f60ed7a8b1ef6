"""The inline dispatcher on SQLite reads the outbox only when something was committed: an idle
one makes cheap looks (``PRAGMA data_version``) instead of outbox reads, and an event that
another process commits (the CLI's ``user delete``: no wake-up) is still handled."""

from __future__ import annotations

import asyncio
import time

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.events.envelope import Event
from imagegate.events.handlers import HandlerContext
from imagegate.events.inline import InlineDispatcher
from tests.unit.test_events_handlers import World, emit_events, wait_for, world

__all__ = ["world"]  # the fixture, used by name


class CountingDispatcher(InlineDispatcher):
    """Counts its looks and its outbox reads."""

    looks = 0
    reads = 0

    def _due(self, woken: bool) -> bool:
        self.looks += 1
        return super()._due(woken)

    async def run_once(self) -> int:
        self.reads += 1
        return await super().run_once()


async def until(done: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_an_idle_dispatcher_looks_without_reading(world: World) -> None:
    seen: list[tuple[str, int]] = []

    async def handler(event: Event, ctx: HandlerContext) -> None:
        seen.append((event.owner_id, event.data["i"]))

    dispatcher = CountingDispatcher(world.ctx, world.engine, handlers={"*": [handler]})
    assert dispatcher.changes is not None
    await dispatcher.start()
    try:
        # The first look reads, and so does the one after the first prune (a commit); then
        # 30 more looks (one per 0.01 s poll) read nothing.
        await until(lambda: dispatcher.looks >= 10)
        first = dispatcher.reads
        assert first <= 2
        await until(lambda: dispatcher.looks >= 40)
        assert dispatcher.reads == first

        # Another process commits an event (its own engine, nothing wakes this dispatcher).
        other = create_engine(str(world.engine.url))
        try:
            other_world = World(other, create_sessionmaker(other), world.ctx, world.images)
            await emit_events(other_world, "ann", 2)
        finally:
            await other.dispose()
        await wait_for(world, {"ann": [0, 1]})
        assert seen == [("ann", 0), ("ann", 1)]

        # Marking them published was a commit too: one more read finds nothing, then quiet.
        looks = dispatcher.looks
        await until(lambda: dispatcher.looks >= looks + 10)
        reads, looks = dispatcher.reads, dispatcher.looks
        await until(lambda: dispatcher.looks >= looks + 30)
        assert dispatcher.reads == reads
    finally:
        await dispatcher.stop()
