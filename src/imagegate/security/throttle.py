"""Login throttling per login and per client address, kept in the database for all replicas."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import LoginThrottle

STALE_AFTER = 3600.0  # rows idle this long carry no state worth keeping


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures: int
    window: float
    lockout: float
    lockout_max: float


def throttle_keys(login: str, address: str | None) -> list[str]:
    keys = [f"login:{login}"]
    if address:
        keys.append(f"addr:{address}")
    return keys


async def retry_after(session: AsyncSession, keys: list[str], now: float) -> int | None:
    """Seconds until the longest block on any of ``keys`` ends, or None when not blocked."""
    rows = await session.scalars(
        select(LoginThrottle.blocked_until).where(LoginThrottle.key.in_(keys))
    )
    until = max(rows, default=0.0)
    return math.ceil(until - now) if until > now else None


async def record_failure(
    session: AsyncSession, keys: list[str], policy: ThrottlePolicy, now: float
) -> None:
    """Count one failure on each key; the ``max_failures``-th within the window starts a lockout
    that doubles with each repeat, up to ``lockout_max``. The caller commits."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for key in keys:
        await session.execute(
            insert(LoginThrottle)
            .values(
                key=key, failures=0, window_started=now, blocked_until=0.0, lockouts=0, updated=now
            )
            .on_conflict_do_nothing(index_elements=["key"])
        )
        row = await session.scalar(
            select(LoginThrottle).where(LoginThrottle.key == key).with_for_update()
        )
        assert row is not None
        if now - row.window_started > policy.window:
            row.failures, row.window_started = 0, now
        if row.lockouts and now - row.blocked_until > policy.lockout_max:
            row.lockouts = 0  # a quiet spell as long as the longest lockout forgives the past
        row.failures += 1
        if row.failures >= policy.max_failures:
            row.lockouts += 1
            row.blocked_until = now + min(
                policy.lockout * 2 ** (row.lockouts - 1), policy.lockout_max
            )
            row.failures, row.window_started = 0, now
        row.updated = now
    await session.execute(delete(LoginThrottle).where(LoginThrottle.updated < now - STALE_AFTER))


async def record_success(session: AsyncSession, login_key: str) -> None:
    """A correct password clears the account's counter (not the address's). Caller commits."""
    await session.execute(delete(LoginThrottle).where(LoginThrottle.key == login_key))
