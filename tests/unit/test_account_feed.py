"""The account feed's logic without a broker: the in-memory state and its watermark, the
heartbeat headers, the directory's choice between memory and database, and the coalesced
account reads (on SQLite)."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import delete, update

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.db.models import User
from imagegate.db.queries import Account
from imagegate.db.reads import EngineReader
from imagegate.events.envelope import Event, EventType
from imagegate.events.feed import (
    HEARTBEAT_HEADER,
    AccountFeed,
    AccountState,
    encode_heartbeat,
    heartbeat_time,
    is_heartbeat,
)
from imagegate.events.heartbeat import Watermark, batch_head
from imagegate.security.directory import AccountBatcher, DatabaseDirectory, FeedDirectory
from imagegate.settings import Settings

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _event(type: str, user_id: str, login: str = "ann") -> Event:
    data = {"id": user_id, "login": login, "created_at": CREATED.isoformat()}
    return Event.new(type, source="/t", subject=f"users/{user_id}", owner_id=user_id, data=data)


def test_heartbeat_headers_round_trip_and_events_are_not_heartbeats() -> None:
    headers = encode_heartbeat(1764460000.25)
    assert headers[0][0] == HEARTBEAT_HEADER
    assert heartbeat_time(headers) == 1764460000.25
    assert is_heartbeat(headers)
    assert heartbeat_time([("content-type", b"application/cloudevents+json")]) is None
    assert not is_heartbeat(None)
    assert not is_heartbeat([])
    # Unreadable: still a heartbeat (skipped as an event) but it proves nothing.
    assert heartbeat_time([(HEARTBEAT_HEADER, b"soon")]) == -math.inf
    assert heartbeat_time([(HEARTBEAT_HEADER, b"nan")]) == -math.inf
    assert heartbeat_time([(HEARTBEAT_HEADER, None)]) == -math.inf
    assert heartbeat_time({HEARTBEAT_HEADER: b"12.5"}) == 12.5  # headers as a dict
    assert heartbeat_time({"content-type": b"x"}) is None


def test_watermark_is_the_minimum_over_every_partition() -> None:
    state = AccountState(60)
    state.reset([0, 1, 2], set())
    assert state.watermark == -math.inf
    assert state.lag() == math.inf
    state.heartbeat(0, 100.0)
    state.heartbeat(1, 105.0)
    assert state.watermark == -math.inf  # partition 2 has not spoken yet
    state.heartbeat(2, 103.0)
    assert state.watermark == 100.0
    state.heartbeat(0, 110.0)
    assert state.watermark == 103.0
    state.heartbeat(2, 90.0)  # an older heartbeat (a relay fail-over) moves nothing back
    assert state.watermark == 103.0
    state.heartbeat(7, 200.0)  # a partition not assigned here
    assert state.watermark == 103.0
    assert state.lag(now=104.5) == pytest.approx(1.5)
    state.reset([0, 1, 2], set())  # a resync forgets every mark
    assert state.watermark == -math.inf


def test_events_add_and_remove_and_duplicates_change_nothing() -> None:
    state = AccountState(60)
    state.reset([0], {"u0"})
    assert state.known("u0") is True
    assert state.known("u1") is None
    state.apply(_event(EventType.ACCOUNT_CREATED, "u1"))
    assert state.known("u1") is True
    state.apply(_event(EventType.ACCOUNT_CREATED, "u1"))  # replayed over the load
    assert state.known("u1") is True
    state.apply(_event(EventType.ACCOUNT_DELETED, "u1"))
    assert state.known("u1") is False
    assert "u1" not in state.accounts
    # A late duplicate of the creation (a batch published twice) cannot bring it back.
    state.apply(_event(EventType.ACCOUNT_CREATED, "u1"))
    assert state.known("u1") is False
    state.apply(_event(EventType.ACCOUNT_DELETED, "u1"))
    assert state.known("u1") is False
    # A deleted id in a later reload stays deleted.
    state.reset([0], {"u1", "u2"})
    assert state.known("u1") is False
    assert state.known("u2") is True
    # Image events are not the feed's business.
    state.apply(_event(EventType.IMAGE_STORED, "u2"))
    assert state.known("u2") is True


def test_deleted_ids_are_forgotten_after_a_token_lifetime() -> None:
    state = AccountState(60)
    state.apply(_event(EventType.ACCOUNT_DELETED, "u1"))
    assert state.prune(now=time.monotonic()) == 0
    assert state.known("u1") is False
    assert state.prune(now=time.monotonic() + 61) == 1
    assert state.known("u1") is None


def test_batch_head_splits_the_snapshot_from_the_rows() -> None:
    head = {"snapshot_at": 12.5, "unpublished": [], "seq": None}
    assert batch_head([head]) == (12.5, [], [])
    rows = [
        {"snapshot_at": 12.5, "unpublished": [7, 8, 9], "seq": 7},
        {"snapshot_at": 12.5, "unpublished": [7, 8, 9], "seq": 8},
    ]
    assert batch_head(rows) == (12.5, [7, 8, 9], rows)


def test_watermark_is_the_snapshot_when_the_batch_took_everything() -> None:
    w = Watermark(limit=11)
    assert w.after_batch(100.0, [], []) == 100.0  # idle
    assert w.after_batch(101.0, [1, 2], [1, 2]) == 101.0


def test_watermark_stops_below_rows_held_back() -> None:
    """A row held back by the fence (or beyond the batch) committed after the last snapshot
    that did not list it: the watermark stays below that snapshot's time until it is out."""
    w = Watermark(limit=11)
    assert w.after_batch(100.0, [], []) == 100.0
    # Row 5 appears at 101 and is held back: it committed after 100.
    assert w.after_batch(101.0, [5, 6], [6]) == 100.0
    assert w.after_batch(102.0, [5, 7], [7]) == 100.0  # still there: its bound stays 100
    # Row 8 appears at 103 beside 5, both held back: 5 still bounds it.
    assert w.after_batch(103.0, [5, 8], []) == 100.0
    # 5 is published; 8 (first seen at 103, so committed after 102) is still held back.
    assert w.after_batch(104.0, [5, 8], [5]) == 102.0
    assert w.after_batch(105.0, [8], [8]) == 105.0


def test_watermark_knows_nothing_from_a_cut_list() -> None:
    w = Watermark(limit=3)
    assert w.after_batch(100.0, [1, 2, 3], [1, 2]) == -math.inf  # more than a batch waiting
    # The next snapshot's new rows may have been beyond the cut: no bound from 100.
    assert w.after_batch(101.0, [3, 4], [4]) == -math.inf
    assert w.after_batch(102.0, [3], [3]) == 102.0
    # A fresh relay (no earlier snapshot) cannot bound what it sees first.
    fresh = Watermark(limit=3)
    assert fresh.after_batch(200.0, [9], []) == -math.inf
    assert fresh.after_batch(201.0, [9], [9]) == 201.0


# --- the directory, on a real (SQLite) database ---------------------------------------------


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return url


async def _add_users(url: str, *ids: str) -> None:
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as session:
        for user_id in ids:
            session.add(User(id=user_id, login=user_id, password_hash="x", created_at=CREATED))
        await session.commit()
    await engine.dispose()


async def test_batcher_coalesces_concurrent_reads_into_one_query(url: str) -> None:
    await _add_users(url, "a", "b", "c")
    engine = create_engine(url)
    batcher = AccountBatcher(engine)
    try:
        found = await asyncio.gather(*(batcher.get(i) for i in ["a", "b", "a", "x", "c"] * 20))
        assert batcher.queries == 1
        assert found[:5] == [
            Account("a", "a", CREATED, 0, 0),
            Account("b", "b", CREATED, 0, 0),
            Account("a", "a", CREATED, 0, 0),
            None,
            Account("c", "c", CREATED, 0, 0),
        ]
        assert found[5:10] == found[:5]
        # Alone, a call still gets its own query.
        assert await batcher.get("b") == Account("b", "b", CREATED, 0, 0)
        assert batcher.queries == 2
    finally:
        await engine.dispose()


class _HeldBatcher(AccountBatcher):
    """Its queries wait for ``release`` before reading: the test decides when they run."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def _read(self, ids: list[str]) -> dict[str, Account]:
        self.started.set()
        await self.release.wait()
        return await super()._read(ids)


async def test_batcher_answers_with_a_query_started_after_the_call(url: str) -> None:
    """Read-your-writes: a call made while a query is running waits for the next query, so it
    sees what was committed before the call."""
    await _add_users(url, "a")
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    batcher = _HeldBatcher(engine)
    try:
        first = asyncio.ensure_future(batcher.get("a"))
        await batcher.started.wait()  # the first query is in flight (held before its read)
        async with sessions() as session:
            await session.execute(update(User).where(User.id == "a").values(image_count=5))
            await session.commit()
        second = asyncio.ensure_future(batcher.get("a"))
        await asyncio.sleep(0)
        batcher.release.set()
        assert (await second) == Account("a", "a", CREATED, 5, 0)
        await first
        assert batcher.queries == 2
    finally:
        await engine.dispose()


async def test_batcher_gives_every_caller_the_database_error(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite'}")  # no tables
    batcher = AccountBatcher(engine)
    try:
        results = await asyncio.gather(batcher.get("a"), batcher.get("b"), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)
        assert batcher._task is None  # ready for the next calls
    finally:
        await engine.dispose()


def _feed(registry: CollectorRegistry) -> AccountFeed:
    async def load() -> set[str]:
        return set()

    return AccountFeed(Settings(events="kafka"), load, registry)


def _fallbacks(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("imagegate_account_feed_fallbacks_total", {"reason": reason})
    return value or 0.0


async def test_directory_answers_from_memory_only_while_the_feed_is_fresh(url: str) -> None:
    await _add_users(url, "live", "gone-in-db")
    engine = create_engine(url)
    registry = CollectorRegistry()
    feed = _feed(registry)
    directory = FeedDirectory(feed, AccountBatcher(engine), 1.0)
    state = feed.state
    try:
        state.reset([0, 1], {"live", "mem-only"})
        # No heartbeat yet: the database answers, counted as lag fallbacks.
        assert await directory.exists("live") is True
        assert await directory.exists("mem-only") is False  # the database's truth
        assert _fallbacks(registry, "lag") == 2
        # Fresh: memory answers ("mem-only" exists only there: proof of where it came from).
        now = time.time()
        state.heartbeat(0, now)
        state.heartbeat(1, now)
        assert directory.fresh()
        assert await directory.exists("mem-only") is True
        assert await directory.exists("live") is True
        assert _fallbacks(registry, "lag") == 2
        # Unknown to memory: the database, counted apart.
        assert await directory.exists("gone-in-db") is True
        assert _fallbacks(registry, "unknown") == 1
        # A deletion seen by the feed is refused at once, also by GET /v1/user.
        state.apply(_event(EventType.ACCOUNT_DELETED, "live"))
        assert await directory.exists("live") is False
        assert await directory.account("live") is None
        # GET /v1/user's usage always comes from the database (read-your-writes).
        account = await directory.account("gone-in-db")
        assert account is not None and account.login == "gone-in-db"
        # Stale (older than the bound): the database again, which still has "live".
        state.reset([0, 1], set(state.accounts))
        state.heartbeat(0, now - 5)
        state.heartbeat(1, now - 5)
        assert not directory.fresh()
        assert await directory.exists("mem-only") is False
        assert _fallbacks(registry, "lag") == 3
        lag = registry.get_sample_value("imagegate_account_feed_lag_seconds")
        assert lag is not None and lag >= 5
    finally:
        await engine.dispose()


async def test_directory_falls_back_for_an_account_removed_from_the_database(url: str) -> None:
    await _add_users(url, "a")
    engine = create_engine(url)
    directory = DatabaseDirectory(EngineReader(engine))
    try:
        assert await directory.exists("a")
        async with create_sessionmaker(engine)() as session:
            await session.execute(delete(User).where(User.id == "a"))
            await session.commit()
        assert not await directory.exists("a")
        assert await directory.account("a") is None
    finally:
        await engine.dispose()
