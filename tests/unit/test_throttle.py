from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.security import throttle

POLICY = throttle.ThrottlePolicy(max_failures=5, window=300, lockout=60, lockout_max=900)


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[AsyncSession]:
    url = f"sqlite:///{tmp_path / 't.db'}"
    upgrade(url)
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as s:
        yield s
    await engine.dispose()


async def fail(session: AsyncSession, keys: list[str], now: float, times: int = 1) -> None:
    for _ in range(times):
        await throttle.record_failure(session, keys, POLICY, now)
        await session.commit()


async def test_five_failures_block_then_the_block_doubles_up_to_the_cap(
    session: AsyncSession,
) -> None:
    keys = ["login:alice"]
    await fail(session, keys, 1000.0, 4)
    assert await throttle.retry_after(session, keys, 1000.0) is None
    await fail(session, keys, 1000.0)
    assert await throttle.retry_after(session, keys, 1000.0) == 60
    now, block_ends = 1000.0, 1060.0
    for block in [120, 240, 480, 900, 900]:
        now = block_ends + 1  # the attacker comes back as soon as the block ends
        assert await throttle.retry_after(session, keys, now) is None
        await fail(session, keys, now, 5)
        assert await throttle.retry_after(session, keys, now) == block
        block_ends = now + block


async def test_failures_outside_the_window_do_not_add_up(session: AsyncSession) -> None:
    keys = ["addr:10.0.0.1"]
    for i in range(10):
        await fail(session, keys, 1000.0 + i * 100, 1)  # 1 per 100 s: at most 3 in any window
    assert await throttle.retry_after(session, keys, 2000.0) is None


async def test_success_clears_the_login_but_not_the_address(session: AsyncSession) -> None:
    keys = ["login:bob", "addr:10.0.0.2"]
    await fail(session, keys, 1000.0, 4)
    await throttle.record_success(session, "login:bob")
    await session.commit()
    await fail(session, ["login:bob"], 1001.0, 1)
    assert await throttle.retry_after(session, ["login:bob"], 1001.0) is None
    await fail(session, ["addr:10.0.0.2"], 1001.0, 1)
    assert await throttle.retry_after(session, ["addr:10.0.0.2"], 1001.0) == 60
