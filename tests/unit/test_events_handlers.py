"""Event handlers and the inline dispatcher on a real SQLite database and folder: the
account purge is idempotent, and a failing event is retried without holding up other owners
or letting its owner's later events overtake it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.db.models import Image, OutboxEvent, PurgeObject, User
from imagegate.events import outbox
from imagegate.events.envelope import Event, EventType
from imagegate.events.handlers import HandlerContext, dispatch, handlers_for
from imagegate.events.inline import InlineDispatcher
from imagegate.events.purge import purge_account
from imagegate.metrics import Metrics
from imagegate.security.accounts import delete_account
from imagegate.settings import Settings
from imagegate.storage.local import LocalStorage

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class World:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ctx: HandlerContext
    images: Path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    settings = Settings(
        data_dir=tmp_path, purge_batch_size=3, outbox_poll_seconds=0.01, outbox_batch_size=4
    )
    storage = LocalStorage(tmp_path / "images")
    yield World(
        engine, sessions, HandlerContext(settings, sessions, storage, Metrics()), storage.root
    )
    await engine.dispose()


async def add_user(world: World, user_id: str, images: int) -> list[str]:
    """A user with ``images`` image records and their files; returns the names."""
    names = [f"{user_id}-{i:03d}.png" for i in range(images)]
    async with world.sessions() as session:
        session.add(User(id=user_id, login=user_id, password_hash="x", created_at=CREATED))
        await session.flush()
        for i, name in enumerate(names):
            session.add(
                Image(
                    name=name,
                    owner_id=user_id,
                    visibility="public" if i % 2 else "private",
                    content_type="image/png",
                    width=1,
                    height=1,
                    frames=1,
                    bytes=10,
                    uploaded_bytes=10,
                    sha256="0" * 64,
                    created_at=CREATED,
                )
            )
            (world.images / name).write_bytes(b"x" * 10)
        await session.commit()
    return names


async def count(world: World, model: type[PurgeObject] | type[Image] | type[OutboxEvent]) -> int:
    async with world.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def deleted_event(world: World, user_id: str) -> Event:
    async with world.sessions() as session:
        user = await session.get(User, user_id)
        assert user is not None
        await delete_account(session, user, source="/test")
    async with world.sessions() as session:
        rows = await outbox.pending(session, 10)
    [row] = [r for r in rows if r.type == EventType.ACCOUNT_DELETED and r.owner_id == user_id]
    return row.event()


def handled(world: World, outcome: str) -> float | None:
    return world.ctx.metrics.registry.get_sample_value(
        "imagegate_events_handled_total",
        {"type": EventType.ACCOUNT_DELETED, "outcome": outcome},
    )


def files(world: World) -> set[str]:
    return {p.name for p in world.images.iterdir() if not p.name.startswith(".")}


async def test_account_deletion_queues_every_image_and_emits_in_one_transaction(
    world: World,
) -> None:
    names = await add_user(world, "ann", 7)
    event = await deleted_event(world, "ann")
    assert dict(event.data) == {"id": "ann", "login": "ann", "images": 7, "bytes": 70}
    assert await count(world, Image) == 0  # the records went with the user
    async with world.sessions() as session:
        queued = dict((await session.execute(select(PurgeObject.name, PurgeObject.public))).all())
    assert queued == {name: i % 2 == 1 for i, name in enumerate(names)}
    assert files(world) == set(names)  # bytes are the handler's job


async def test_purge_removes_everything_in_batches_and_twice_changes_nothing(
    world: World,
) -> None:
    await add_user(world, "ann", 7)  # three batches of three
    kept = await add_user(world, "bob", 2)
    event = await deleted_event(world, "ann")
    assert handlers_for(event.type)[0] is purge_account  # then the "*" handlers
    (world.images / "ann-004.png").unlink()  # already gone: not an error
    await dispatch(event, world.ctx)
    assert files(world) == set(kept)
    assert await count(world, PurgeObject) == 0
    await dispatch(event, world.ctx)  # the same event again: nothing to do, no error
    assert files(world) == set(kept)
    assert handled(world, "ok") == 2


async def test_a_failed_batch_keeps_its_rows_and_a_retry_finishes(world: World) -> None:
    names = await add_user(world, "ann", 7)
    event = await deleted_event(world, "ann")
    # A non-empty directory where a file was: unlinking it fails, even for root.
    obstacle = world.images / names[4]
    obstacle.unlink()
    obstacle.mkdir()
    (obstacle / "inside").write_bytes(b"")
    with pytest.raises(IsADirectoryError):
        await dispatch(event, world.ctx)
    # The first batch (0-2) is done and forgotten; the failed batch (3-5) stays queued even
    # though its other files are gone; the rest was not reached.
    assert files(world) == {names[4], names[6]}
    async with world.sessions() as session:
        left = set(await session.scalars(select(PurgeObject.name)))
    assert left == set(names[3:])
    assert handled(world, "error") == 1
    (obstacle / "inside").unlink()
    obstacle.rmdir()
    await dispatch(event, world.ctx)
    assert files(world) == set()
    assert await count(world, PurgeObject) == 0


async def emit_events(world: World, owner: str, n: int) -> None:
    async with world.sessions() as session:
        for i in range(n):
            outbox.emit(
                session,
                EventType.IMAGE_DELETED,
                owner_id=owner,
                subject=f"images/{owner}-{i}",
                data={"i": i},
                source="/test",
            )
        await session.commit()


async def published(world: World) -> dict[str, list[int]]:
    """Published events' ``data.i`` by owner, in seq order."""
    async with world.sessions() as session:
        rows = await session.execute(
            select(OutboxEvent.owner_id, OutboxEvent.payload)
            .where(OutboxEvent.published_at.is_not(None))
            .order_by(OutboxEvent.seq)
        )
        out: dict[str, list[int]] = {}
        for owner, payload in rows:
            out.setdefault(owner, []).append(Event.from_json(payload).data["i"])
        return out


async def wait_for(world: World, want: dict[str, list[int]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (got := await published(world)) != want:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.01)


async def test_dispatcher_retries_a_failing_owner_and_keeps_others_and_order(
    world: World,
) -> None:
    seen: list[tuple[str, int]] = []
    fail = asyncio.Event()
    fail.set()

    async def handler(event: Event, ctx: HandlerContext) -> None:
        seen.append((event.owner_id, event.data["i"]))
        if event.owner_id == "ann" and fail.is_set():
            raise RuntimeError("ann's handler fails until told otherwise")

    # ann's events come first and her first one fails; bob's (more than a batch) go on.
    await emit_events(world, "ann", 3)
    await emit_events(world, "bob", 6)
    dispatcher = InlineDispatcher(world.ctx, world.engine, handlers={"*": [handler]})
    await dispatcher.start()
    try:
        await wait_for(world, {"bob": list(range(6))})
        assert ("ann", 1) not in seen  # her later events waited behind the failing one
        # Retried with backoff: poll until a second attempt was made.
        deadline = time.monotonic() + 30
        while seen.count(("ann", 0)) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert ("ann", 1) not in seen
        fail.clear()
        await wait_for(world, {"ann": [0, 1, 2], "bob": list(range(6))})
        ann = [i for owner, i in seen if owner == "ann"]
        assert ann[-3:] == [0, 1, 2] and set(ann[:-3]) == {0}
        # An event emitted through a session that knows the dispatcher wakes it.
        world.sessions.configure(info={outbox.WAKE_INFO_KEY: dispatcher.wake})
        await emit_events(world, "cid", 1)
        await wait_for(world, {"ann": [0, 1, 2], "bob": list(range(6)), "cid": [0]})
    finally:
        await dispatcher.stop()
    assert dispatcher._task is None


async def test_backlog_and_prune(world: World) -> None:
    async with world.sessions() as session:
        assert await outbox.backlog(session) == outbox.Backlog(0, 0.0)
    await emit_events(world, "ann", 3)
    async with world.sessions() as session:
        rows = await outbox.pending(session, 10)
        assert [r.owner_id for r in rows] == ["ann"] * 3
        found = await outbox.backlog(session)
        assert found.depth == 3 and found.oldest_age_seconds >= 0
        old = datetime(2020, 1, 1, tzinfo=UTC)
        await outbox.mark_published(session, [rows[0].seq], when=old)
        await outbox.mark_published(session, [rows[1].seq])
        await session.commit()
    async with world.sessions() as session:
        assert (await outbox.backlog(session)).depth == 1
        assert await outbox.prune(session, retention_seconds=3600) == 1  # only the old one
        await session.commit()
        left = list(await session.scalars(select(OutboxEvent.seq).order_by(OutboxEvent.seq)))
    assert left == [rows[1].seq, rows[2].seq]
    async with world.sessions() as session:
        assert [r.seq for r in await outbox.pending(session, 10)] == [rows[2].seq]
        assert await outbox.pending(session, 10, skip_owners={"ann"}) == []
