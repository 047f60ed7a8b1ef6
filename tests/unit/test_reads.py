"""The hot-path reader: the same answers on the loop thread as through the engine, commits of
other connections seen at once, and the usage counters kept by the migration and the writes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from imagegate.db import queries
from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.db.models import Image, User
from imagegate.db.reads import EngineReader, LoopThreadReader, create_reader

CREATED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _image(name: str, owner: str, size: int, visibility: str = "public") -> Image:
    return Image(
        name=name,
        owner_id=owner,
        visibility=visibility,
        content_type="image/png",
        width=1,
        height=1,
        frames=1,
        bytes=size,
        uploaded_bytes=size,
        sha256="0" * 64,
        created_at=CREATED,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return url


async def test_loop_thread_reader_answers_like_the_engine(url: str) -> None:
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as session:
        session.add(User(id="u1", login="ann", password_hash="x", created_at=CREATED))
        await session.flush()
        await queries.add_image(session, _image("a.png", "u1", 100))
        await queries.add_image(session, _image("b.png", "u1", 23, "private"))
        await session.commit()
    loop_reader, engine_reader = LoopThreadReader(url), EngineReader(engine)
    try:
        for reader in (loop_reader, engine_reader):
            account = await queries.account(reader, "u1")
            assert account == queries.Account("u1", "ann", CREATED, 2, 123)
            assert account is not None and account.created_at.tzinfo is not None
            assert await queries.user_exists(reader, "u1")
            assert not await queries.user_exists(reader, "nobody")
            public = await queries.image_for_viewer(reader, "a.png", None)
            assert public is not None and public.bytes == 100 and public.public
            assert await queries.image_for_viewer(reader, "b.png", None) is None
            assert await queries.image_for_viewer(reader, "b.png", "someone-else") is None
            assert await queries.image_for_viewer(reader, "b.png", "u1") is not None
    finally:
        await loop_reader.close()
        await engine.dispose()


async def test_loop_thread_reader_sees_other_connections_commits_at_once(url: str) -> None:
    reader = LoopThreadReader(url)
    engine = create_engine(url)
    try:
        assert not await queries.user_exists(reader, "u2")
        async with create_sessionmaker(engine)() as session:
            session.add(User(id="u2", login="bo", password_hash="x", created_at=CREATED))
            await session.commit()
        assert await queries.user_exists(reader, "u2")
        async with create_sessionmaker(engine)() as session:
            await session.delete(await session.get(User, "u2"))
            await session.commit()
        assert not await queries.user_exists(reader, "u2")
    finally:
        await reader.close()
        await engine.dispose()


async def test_loop_thread_reader_never_writes_and_reports_errors_as_database_errors(
    url: str, tmp_path: Path
) -> None:
    reader = LoopThreadReader(url)
    try:
        assert not await queries.user_exists(reader, "x")
        conn = reader._connection()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM users")
    finally:
        await reader.close()
    missing = LoopThreadReader(f"sqlite:///{tmp_path / 'no' / 'such.db'}")
    with pytest.raises(OperationalError):  # mapped to 503 by the app's handler
        await queries.user_exists(missing, "x")


async def test_file_databases_read_on_the_loop_thread_in_memory_ones_through_the_engine(
    url: str,
) -> None:
    engine = create_engine(url)
    try:
        assert isinstance(create_reader(url, engine), LoopThreadReader)
        assert isinstance(create_reader("sqlite://", engine), EngineReader)
        assert isinstance(create_reader("postgresql://u@h/db", engine), EngineReader)
    finally:
        await engine.dispose()


async def test_delete_takes_the_image_off_the_usage(url: str) -> None:
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            session.add(User(id="u3", login="cy", password_hash="x", created_at=CREATED))
            await session.flush()
            await queries.add_image(session, _image("c.png", "u3", 40))
            await queries.add_image(session, _image("d.png", "u3", 2))
            await session.commit()
        async with sessions() as session:
            assert await queries.delete_image(session, "c.png", "u3") is not None
            assert await queries.delete_image(session, "d.png", "someone-else") is None
            await session.commit()
        account = await queries.account(EngineReader(engine), "u3")
        assert account is not None and (account.images, account.bytes) == (1, 2)
    finally:
        await engine.dispose()


def test_migration_fills_the_counters_from_existing_images(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    upgrade(url, "0001")
    with sqlite3.connect(tmp_path / "old.sqlite") as conn:
        conn.executemany(
            "INSERT INTO users (id, login, password_hash, created_at) VALUES (?, ?, 'x', ?)",
            [("u1", "ann", "2026-01-01 00:00:00"), ("u2", "bo", "2026-01-01 00:00:00")],
        )
        conn.executemany(
            "INSERT INTO images VALUES (?, 'u1', 'public', 'image/png', 1, 1, 1, ?, ?, ?, ?)",
            [(f"{i}.png", 10 * i, 10 * i, "0" * 64, "2026-01-01 00:00:00") for i in (1, 2, 3)],
        )
    upgrade(url)
    with sqlite3.connect(tmp_path / "old.sqlite") as conn:
        rows = conn.execute("SELECT id, image_count, image_bytes FROM users ORDER BY id")
        assert rows.fetchall() == [("u1", 3, 60), ("u2", 0, 0)]
