"""API keys (security/apikeys.py) on a real SQLite database with the clock controlled: the key's
shape and what is stored, the one-second verdict cache (revocation, expiry, a deleted account),
the account limit, and ``last_used_at`` written at most once an interval, in the background."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.db.models import ApiKey, User
from imagegate.db.reads import LoopThreadReader
from imagegate.deps import check_scope
from imagegate.errors import Forbidden
from imagegate.security import apikeys
from imagegate.security.tokens import Identity

CREATED = datetime(2026, 1, 2, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], str]]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    async with sessions() as session:
        for uid in ("u1", "u2"):
            session.add(User(id=uid, login=f"l{uid}", password_hash="x", created_at=CREATED))
        await session.commit()
    yield sessions, url
    await engine.dispose()


async def _make(
    sessions: async_sessionmaker[AsyncSession], user: str = "u1", scopes: str = "images:read"
) -> tuple[ApiKey, str]:
    async with sessions() as session:
        made = await apikeys.create(session, user, "ci", frozenset(scopes.split()), 30, 100)
    assert made is not None
    return made


def test_key_shape() -> None:
    keys = {apikeys.new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert apikeys.KEY_RE.fullmatch(key) and apikeys.is_api_key(key)
        assert re.fullmatch(r"[0-9a-f]{64}", apikeys.key_hash(key))
    assert not apikeys.is_api_key("eyJhbGciOiJFUzI1NiJ9.x.y")
    assert apikeys.encode_scopes(["images:write", "images:read"]) == "images:read images:write"


def test_scope_checks() -> None:
    person = Identity("u1", "ann")
    reader = Identity("u1", "ann", scopes=frozenset({apikeys.READ}))
    check_scope(person, apikeys.WRITE, session_only=True)  # a session may do anything
    check_scope(reader, apikeys.READ)
    check_scope(reader, None)
    with pytest.raises(Forbidden, match="images:write"):
        check_scope(reader, apikeys.WRITE)
    with pytest.raises(Forbidden, match="signed-in session"):
        check_scope(reader, None, session_only=True)


async def test_stored_as_a_hash_and_verified(
    db: tuple[async_sessionmaker[AsyncSession], str],
) -> None:
    sessions, url = db
    _, key = await _make(sessions, scopes="images:read images:write")
    async with sessions() as session:
        stored = (await session.execute(select(ApiKey))).scalar_one()
    assert stored.key_hash == apikeys.key_hash(key) and key not in repr(vars(stored))
    assert stored.prefix == key[:12]
    reader = LoopThreadReader(url)
    keys = apikeys.ApiKeys(reader, sessions)
    try:
        identity = await keys.verify(key)
        assert identity == Identity("u1", "lu1", scopes=frozenset({"images:read", "images:write"}))
        for bad in ("igk_short", key + "x", "igk_" + "A" * 54, key[:-1] + "!"):
            with pytest.raises(apikeys.InvalidKey):
                await keys.verify(bad)
    finally:
        await keys.close()
        await reader.close()


async def test_verdicts_are_kept_one_second(
    db: tuple[async_sessionmaker[AsyncSession], str],
) -> None:
    sessions, url = db
    clock = Clock()
    reader = LoopThreadReader(url)
    keys = apikeys.ApiKeys(reader, sessions, clock=clock)
    try:
        revoked, revoked_key = await _make(sessions)
        expiring, expiring_key = await _make(sessions)
        _, gone_key = await _make(sessions, user="u2")
        for key in (revoked_key, expiring_key, gone_key):
            await keys.verify(key)
        async with sessions() as session:
            assert await apikeys.revoke(session, "u1", revoked.id)
            assert not await apikeys.revoke(session, "u2", expiring.id)  # not theirs
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == expiring.id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            user = await session.get(User, "u2")
            await session.delete(user)
            await session.commit()
        clock.now += 0.9  # still the cached verdicts
        for key in (revoked_key, expiring_key, gone_key):
            await keys.verify(key)
        clock.now += 0.1
        for key in (revoked_key, expiring_key, gone_key):
            with pytest.raises(apikeys.InvalidKey):
                await keys.verify(key)
    finally:
        await keys.close()
        await reader.close()


async def test_limit_counts_unexpired_keys(
    db: tuple[async_sessionmaker[AsyncSession], str],
) -> None:
    sessions, _ = db
    async with sessions() as session:
        for _ in range(2):
            assert await apikeys.create(session, "u1", "k", frozenset({"images:read"}), 1, 2)
        with pytest.raises(apikeys.TooManyKeys):
            await apikeys.create(session, "u1", "k", frozenset({"images:read"}), 1, 2)
        await session.execute(
            update(ApiKey).values(expires_at=datetime.now(UTC) - timedelta(days=1))
        )
        await session.commit()
        assert await apikeys.create(session, "u1", "k", frozenset({"images:read"}), 1, 2)
        assert await apikeys.create(session, "nobody", "k", frozenset(), 1, 2) is None


async def test_last_use_written_once_an_interval(
    db: tuple[async_sessionmaker[AsyncSession], str],
) -> None:
    sessions, url = db
    clock = Clock()
    reader = LoopThreadReader(url)
    keys = apikeys.ApiKeys(reader, sessions, clock=clock, last_used_interval=60)
    row, key = await _make(sessions)

    async def last_used() -> datetime | None:
        await keys.close()  # the background write, if one was started
        async with sessions() as session:
            value: datetime | None = await session.scalar(
                select(ApiKey.last_used_at).where(ApiKey.id == row.id)
            )
            return value

    try:
        await keys.verify(key)
        first = await last_used()
        assert first is not None
        for _ in range(50):
            clock.now += 1.0  # past the verdict cache: a read each time, no write
            await keys.verify(key)
            await asyncio.sleep(0)
        assert await last_used() == first
        clock.now += 10.0
        await keys.verify(key)
        second = await last_used()
        assert second is not None and second > first
    finally:
        await keys.close()
        await reader.close()
