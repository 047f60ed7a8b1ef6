"""Engine construction for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def async_url(url: str) -> str:
    """The URL with an async driver: aiosqlite, or for a plain ``postgresql://`` asyncpg (the
    fastest PostgreSQL driver for asyncio: a quarter less CPU a query than psycopg, measured in
    docs/performance.md). An explicit ``postgresql+psycopg://`` is kept."""
    u = make_url(url)
    if u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (migrations): sqlite3 or psycopg."""
    u = make_url(async_url(url))
    if u.drivername == "sqlite+aiosqlite":
        u = u.set(drivername="sqlite")
    elif u.drivername == "postgresql+asyncpg":
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the one writer; FULL makes a commit durable before we answer.
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        "foreign_keys=ON",
        "busy_timeout=10000",
    ):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def create_engine(url: str, pool_size: int = 20) -> AsyncEngine:
    """An async engine with the pragmas and pool settings each backend needs."""
    url = async_url(url)
    if is_sqlite(url):
        engine = create_async_engine(url, pool_size=8, max_overflow=8)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No overflow: a connection opened for a burst and closed after it costs a SCRAM handshake
    # (milliseconds of CPU on both sides) per request; waiting for a pooled one is cheaper.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=10, pool_pre_ping=True
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
