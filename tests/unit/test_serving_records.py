"""The fast path's record cache on a real SQLite file: an entry is used only while nothing this
process does with the database came in between, and another connection's commit is seen at
the next look. And the cache of format choices stays within its bound."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegate.db.changes import SqliteChanges
from imagegate.db.engine import create_engine
from imagegate.serving import _FORMATS, _FORMATS_MAX, RecordCache, _format


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (v TEXT)"))
        await conn.execute(text("INSERT INTO t VALUES ('one')"))
    yield engine
    await engine.dispose()


class Reads:
    """A read that counts how often it ran and answers the row's current value."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.count = 0

    async def __call__(self) -> str | None:
        self.count += 1
        row = self.db.execute("SELECT v FROM t").fetchone()
        return str(row[0]) if row else None


def cache_for(engine: AsyncEngine, tmp_path: Path, **kwargs: float) -> RecordCache:
    return RecordCache(engine, SqliteChanges(str(tmp_path / "db.sqlite")), **kwargs)


async def test_an_entry_is_used_until_this_process_touches_the_database(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    cache, read = cache_for(engine, tmp_path, look=3600), Reads(tmp_path / "db.sqlite")
    assert await cache.fetch("k", read) == "one"
    assert await cache.fetch("k", read) == "one"
    assert (read.count, cache.hits, cache.misses) == (1, 1, 1)
    # A write here (its connection checked out and in): the next fetch reads again.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE t SET v = 'two'"))
    assert await cache.fetch("k", read) == "two"
    assert read.count == 2
    # While a connection is out (a transaction under way), nothing is answered from memory
    # or kept.
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        assert await cache.fetch("k", read) == "two"
        assert await cache.fetch("k", read) == "two"
        assert read.count == 4
    assert await cache.fetch("k", read) == "two"
    assert await cache.fetch("k", read) == "two"
    assert read.count == 5


async def test_another_connection_s_commit_is_seen_at_the_next_look(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    cache, read = cache_for(engine, tmp_path, look=0), Reads(tmp_path / "db.sqlite")
    assert await cache.fetch("k", read) == "one"
    assert await cache.fetch("k", read) == "one"
    assert read.count == 1
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    other.execute("UPDATE t SET v = 'three'")
    assert await cache.fetch("k", read) == "three"
    other.execute("DELETE FROM t")
    assert await cache.fetch("k", read) is None
    assert await cache.fetch("k", read) is None  # absent: never kept
    assert read.count == 4


async def test_no_entry_outlives_its_ttl(engine: AsyncEngine, tmp_path: Path) -> None:
    cache, read = cache_for(engine, tmp_path, ttl=0), Reads(tmp_path / "db.sqlite")
    for _ in range(3):
        assert await cache.fetch("k", read) == "one"
    assert read.count == 3 and cache.hits == 0


async def test_the_entries_are_bounded(engine: AsyncEngine, tmp_path: Path) -> None:
    cache, read = cache_for(engine, tmp_path, look=3600), Reads(tmp_path / "db.sqlite")
    cache.max_entries = 10
    for i in range(25):
        await cache.fetch(i, read)
        assert len(cache._entries) <= 10


def test_format_choices_are_remembered_within_a_bound() -> None:
    assert _format(b"image/avif,image/webp,*/*", "jpg") == "avif"
    assert _format(b"image/webp", "png") == "webp"
    assert _format(b"image/avif;q=0, image/png", "png") == "png"
    for i in range(3 * _FORMATS_MAX):
        assert _format(b"text/x-%d" % i, "gif") == "gif"
        assert len(_FORMATS) <= _FORMATS_MAX
