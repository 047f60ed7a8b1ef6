"""The webhook delivery queue on a real database (SQLite; PostgreSQL too when
IMAGEGATE_TEST_POSTGRES_URL names one): one delivery per event and webhook, leases that keep
two loops off one delivery, outcomes recorded only by the lease holder, and deleted
webhooks taking their deliveries with them. Time is passed in, never read."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.db.models import User, Webhook, WebhookDelivery
from imagegate.settings import Settings
from imagegate.webhooks import deliveries
from imagegate.webhooks.delivery import DeliveryLoop

PG_URL = os.environ.get("IMAGEGATE_TEST_POSTGRES_URL")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=70)
# The fixtures' loop (asyncpg's connections belong to the loop that opened them).
on_fixture_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
async def sessions(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    url = PG_URL if request.param == "postgresql" else f"sqlite:///{tmp_path / 't.db'}"
    assert url is not None
    upgrade(url)
    engine: AsyncEngine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM webhook_deliveries"))
        await conn.execute(text("DELETE FROM webhooks"))
    yield create_sessionmaker(engine)
    await engine.dispose()


async def _webhook(
    sessions: async_sessionmaker[AsyncSession], events: list[str] | None = None
) -> Webhook:
    async with sessions() as s:
        user = User(
            id=str(uuid.uuid4()),
            login=f"u{uuid.uuid4().hex[:12]}",
            password_hash="x",
            created_at=T0,
        )
        hook = Webhook(
            id=str(uuid.uuid4()),
            user_id=user.id,
            url="http://127.0.0.1:9/",
            events=deliveries.encode_events(events),
            secret="whsec_AAAA",
            created_at=T0,
        )
        s.add(user)
        await s.flush()
        s.add(hook)
        await s.commit()
        return hook


async def _enqueue(
    sessions: async_sessionmaker[AsyncSession], hooks: list[Webhook], event_id: str
) -> None:
    async with sessions() as s:
        await deliveries.enqueue(
            s, hooks, event_id=event_id, event_type="imagegate.image.stored", payload="{}", now=T0
        )
        await s.commit()


async def _count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


async def _claim(
    sessions: async_sessionmaker[AsyncSession], now: datetime, limit: int = 10
) -> list[deliveries.Claimed]:
    async with sessions() as s:
        return await deliveries.claim_due(s, now=now, lease_until=now + LEASE, limit=limit)


async def _record(
    sessions: async_sessionmaker[AsyncSession],
    claimed: deliveries.Claimed,
    now: datetime,
    *,
    delivered: bool,
) -> str | None:
    async with sessions() as s:
        return await deliveries.record_attempt(
            s,
            claimed,
            started=now,
            now=now,
            delivered=delivered,
            status=200 if delivered else 500,
            error=None if delivered else "HTTP 500",
            base_seconds=5.0,
            window_seconds=86400,
        )


@on_fixture_loop
async def test_the_same_event_queued_twice_is_one_delivery(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    a, b = await _webhook(sessions), await _webhook(sessions)
    await _enqueue(sessions, [a, b], "event-1")
    await _enqueue(sessions, [a, b], "event-1")  # a second dispatch of the same event
    await _enqueue(sessions, [a], "event-2")
    assert await _count(sessions) == 3


def test_subscriptions_filter_by_type() -> None:
    every = Webhook(events=None)
    stored_only = Webhook(events=deliveries.encode_events(["imagegate.image.stored"]))
    assert deliveries.subscribed(every, "imagegate.account.deleted")
    assert deliveries.subscribed(stored_only, "imagegate.image.stored")
    assert not deliveries.subscribed(stored_only, "imagegate.image.deleted")


@on_fixture_loop
async def test_concurrent_claims_never_take_one_delivery_twice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    hook = await _webhook(sessions)
    for n in range(30):
        await _enqueue(sessions, [hook], f"event-{n}")
    claimed: list[deliveries.Claimed] = []
    for _ in range(30):  # rounds of six loops claiming at once, until nothing is left
        batches = await asyncio.gather(*(_claim(sessions, T0, limit=7) for _ in range(6)))
        if not any(batches):
            break
        claimed += [c for batch in batches for c in batch]
    ids = [c.id for c in claimed]
    assert len(ids) == len(set(ids)) == 30
    assert all(c.url == hook.url and c.secret == hook.secret for c in claimed)


@on_fixture_loop
async def test_one_webhook_cannot_take_every_slot(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    slow, other = await _webhook(sessions), await _webhook(sessions)
    for n in range(20):  # a burst for one webhook first…
        await _enqueue(sessions, [slow], f"burst-{n}")
    async with sessions() as s:  # …and one for another webhook, due after all of them
        await deliveries.enqueue(
            s,
            [other],
            event_id="late",
            event_type="imagegate.image.stored",
            payload="{}",
            now=T0 + timedelta(seconds=1),
        )
        await s.commit()
    now = T0 + timedelta(seconds=2)
    first = await _claim(sessions, now, limit=16)
    assert sorted(c.webhook_id for c in first).count(slow.id) == deliveries.PER_WEBHOOK
    assert [c.event_id for c in first if c.webhook_id == other.id] == ["late"]
    # While those are in flight, the busy webhook gets no more slots.
    async with sessions() as s:
        more = await deliveries.claim_due(
            s, now=now, lease_until=now + LEASE, limit=16, busy={slow.id: deliveries.PER_WEBHOOK}
        )
    assert more == []


@on_fixture_loop
async def test_a_lease_keeps_others_off_until_it_runs_out(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    hook = await _webhook(sessions)
    await _enqueue(sessions, [hook], "event-1")
    [first] = await _claim(sessions, T0)
    assert await _claim(sessions, T0 + LEASE - timedelta(seconds=1)) == []
    # The holder died mid-attempt: once the lease is over, another loop takes the delivery…
    [second] = await _claim(sessions, T0 + LEASE)
    assert second.id == first.id and second.claim != first.claim
    # …and the first holder, back late, can no longer record an outcome over it.
    assert await _record(sessions, first, T0 + LEASE, delivered=True) is None
    assert await _record(sessions, second, T0 + LEASE, delivered=True) == deliveries.DELIVERED
    assert await _claim(sessions, T0 + 10 * LEASE) == []


@on_fixture_loop
async def test_a_failure_is_retried_on_schedule_then_given_up(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    hook = await _webhook(sessions)
    await _enqueue(sessions, [hook], "event-1")
    now = T0
    [claimed] = await _claim(sessions, now)
    assert await _record(sessions, claimed, now, delivered=False) == deliveries.PENDING
    assert await _claim(sessions, now + timedelta(seconds=4)) == []  # first retry: after 5 s
    now += timedelta(seconds=5)
    [claimed] = await _claim(sessions, now)
    assert claimed.attempts == 1 and claimed.first_attempt_at == T0
    # Past the retry window after the first attempt: failed for good, never claimed again.
    now = T0 + timedelta(days=1)
    assert await _record(sessions, claimed, now, delivered=False) == deliveries.FAILED
    assert await _claim(sessions, now + timedelta(days=30)) == []
    async with sessions() as s:
        row = await s.scalar(select(WebhookDelivery))
    assert row is not None
    assert (row.status, row.attempts, row.last_status, row.next_attempt_at) == (
        "failed",
        2,
        500,
        None,
    )


@on_fixture_loop
async def test_deleting_a_webhook_stops_its_deliveries(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    hook, other = await _webhook(sessions), await _webhook(sessions)
    await _enqueue(sessions, [hook, other], "event-1")
    [*claimed] = await _claim(sessions, T0)
    mine = next(c for c in claimed if c.webhook_id == hook.id)
    async with sessions() as s:
        # Only its owner can delete it.
        assert not await deliveries.delete_webhook(s, other.user_id, hook.id)
        assert await deliveries.delete_webhook(s, hook.user_id, hook.id)
        await s.commit()
    assert await _count(sessions) == 1
    # An attempt in flight when it was deleted records nothing.
    assert await _record(sessions, mine, T0, delivered=False) is None
    assert await _count(sessions) == 1


@on_fixture_loop
async def test_finished_deliveries_are_pruned_after_their_time(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    hook = await _webhook(sessions)
    await _enqueue(sessions, [hook], "event-1")
    await _enqueue(sessions, [hook], "event-2")
    [done, _] = await _claim(sessions, T0, limit=2)
    await _record(sessions, done, T0, delivered=True)
    async with sessions() as s:
        assert await deliveries.prune_finished(s, before=T0) == 0
    async with sessions() as s:
        assert await deliveries.prune_finished(s, before=T0 + timedelta(seconds=1)) == 1
    assert await _count(sessions) == 1  # the pending one stays


@on_fixture_loop
async def test_a_released_delivery_is_due_again_at_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    hook = await _webhook(sessions)
    await _enqueue(sessions, [hook], "event-1")
    [held] = await _claim(sessions, T0)
    async with sessions() as s:
        await deliveries.release(s, [held], now=T0)
    [again] = await _claim(sessions, T0)
    assert again.id == held.id and again.attempts == 0
    async with sessions() as s:  # a stale holder hands back nothing it no longer holds
        await deliveries.release(s, [held], now=T0)
    assert await _claim(sessions, T0) == []


# --- the loop, with a real receiver on loopback -------------------------------------------


@contextlib.asynccontextmanager
async def _receiver(answer: bytes | None) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP server on 127.0.0.1 that records request heads and answers ``answer`` (None:
    never answers)."""
    heads: list[bytes] = []
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            if answer is None:
                await never.wait()
            writer.write(answer or b"")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook", heads
    finally:
        never.set()
        server.close()
        await server.wait_closed()


async def _pointed_at(sessions: async_sessionmaker[AsyncSession], url: str) -> Webhook:
    hook = await _webhook(sessions)
    async with sessions() as s:
        await s.execute(update(Webhook).where(Webhook.id == hook.id).values(url=url))
        await s.commit()
    return hook


async def _poll(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 60
    while not await check():
        assert time.monotonic() < deadline, f"not within 60 s: {what}"
        await asyncio.sleep(0.02)


def _loop(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> DeliveryLoop:
    settings = Settings(data_dir=tmp_path, webhook_allowed_networks=["127.0.0.0/8"])
    return DeliveryLoop(settings, sessions, poll_seconds=0.05)


async def _row(sessions: async_sessionmaker[AsyncSession]) -> WebhookDelivery:
    async with sessions() as s:
        row = await s.scalar(select(WebhookDelivery))
    assert row is not None
    return row


@on_fixture_loop
async def test_the_loop_sends_due_deliveries_and_records_them(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with _receiver(b"HTTP/1.1 204 No Content\r\n\r\n") as (url, heads):
        hook = await _pointed_at(sessions, url)
        loop = _loop(sessions, tmp_path)
        loop.start()
        try:
            await _enqueue(sessions, [hook], "event-1")
            await _poll(lambda: _status_is(sessions, deliveries.DELIVERED), "the delivery recorded")
        finally:
            await loop.stop()
    row = await _row(sessions)
    assert (row.attempts, row.last_status, row.claimed_by) == (1, 204, None)
    assert len(heads) == 1 and b"webhook-id: event-1\r\n" in heads[0].lower()


async def _status_is(sessions: async_sessionmaker[AsyncSession], status: str) -> bool:
    return (await _row(sessions)).status == status


@on_fixture_loop
async def test_stopping_the_loop_hands_attempts_in_flight_back(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with _receiver(None) as (url, heads):
        hook = await _pointed_at(sessions, url)
        loop = _loop(sessions, tmp_path)
        loop.start()
        try:
            await _enqueue(sessions, [hook], "event-1")
            await _poll(lambda: _arrived(heads), "the attempt in flight")
        finally:
            await loop.stop()
    row = await _row(sessions)
    assert row.status == deliveries.PENDING and row.claimed_by is None and row.attempts == 0
    assert row.next_attempt_at is not None and row.next_attempt_at <= datetime.now(UTC)


async def _arrived(heads: list[bytes]) -> bool:
    return bool(heads)


@on_fixture_loop
async def test_held_deliveries_are_queued_claimed_and_returned_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    mine, other = await _webhook(sessions), await _webhook(sessions)
    hold = deliveries.Hold("claim-1", T0 + LEASE, frozenset({mine.id}))

    async def enqueue() -> list[deliveries.Claimed]:
        async with sessions() as s:
            held = await deliveries.enqueue(
                s,
                [mine, other],
                event_id="event-1",
                event_type="imagegate.image.stored",
                payload="{}",
                now=T0,
                hold=hold,
            )
            await s.commit()
            return held

    held = await enqueue()
    assert [(c.webhook_id, c.claim, c.url, c.secret) for c in held] == [
        (mine.id, "claim-1", mine.url, mine.secret)
    ]
    # Only the other webhook's delivery is due for the loops; the held one is leased.
    assert [c.webhook_id for c in await _claim(sessions, T0)] == [other.id]
    assert await enqueue() == []  # dispatched again: nothing new to hand over
    assert await _record(sessions, held[0], T0, delivered=True) == deliveries.DELIVERED


@on_fixture_loop
async def test_closed_webhooks_are_pruned_after_the_retention_once_nothing_is_pending(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    busy, done, open_ = await _webhook(sessions), await _webhook(sessions), await _webhook(sessions)
    await _enqueue(sessions, [busy, done], "event-1")
    [for_done] = [c for c in await _claim(sessions, T0) if c.webhook_id == done.id]
    assert await _record(sessions, for_done, T0, delivered=True) == deliveries.DELIVERED
    async with sessions() as s:
        for hook in (busy, done):
            await deliveries.close_webhooks(s, hook.user_id, now=T0)
        await s.commit()
    async with sessions() as s:  # not before the retention is over
        assert await deliveries.prune_closed(s, before=T0) == 0
    async with sessions() as s:
        assert await deliveries.prune_closed(s, before=T0 + timedelta(seconds=1)) == 1
    async with sessions() as s:
        left = set(await s.scalars(select(Webhook.id)))
        pending = await s.scalar(select(func.count()).select_from(WebhookDelivery))
    # The closed one with a delivery still pending stays, and so does the open one.
    assert {busy.id, open_.id} <= left and done.id not in left
    assert pending == 1
