"""Same upload twice, at the database: the unique (owner, upload_sha256) index that settles two
replicas recording the same upload at once, the record step that answers the winner, and
migration 0011 leaving older images out of it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from alembic import command
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from imagegate.db import queries
from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import alembic_config, upgrade
from imagegate.db.models import Image, OutboxEvent, User
from imagegate.errors import Unauthorized
from imagegate.uploader.pipeline import RecordUnknown, _record

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DIGEST = "ab" * 32


def _image(name: str, owner: str, upload_sha256: str | None = DIGEST) -> Image:
    return Image(
        name=name,
        owner_id=owner,
        visibility="public",
        content_type="image/png",
        width=1,
        height=1,
        frames=1,
        bytes=10,
        uploaded_bytes=20,
        sha256="0" * 64,
        upload_sha256=upload_sha256,
        created_at=CREATED,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return url


async def test_record_answers_the_image_another_replica_recorded_first(url: str) -> None:
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    runtime: Any = SimpleNamespace(
        sessions=sessions, settings=SimpleNamespace(event_source="/test")
    )
    try:
        async with sessions() as session:
            for user in ("u1", "u2"):
                session.add(User(id=user, login=user, password_hash="x", created_at=CREATED))
            await session.commit()
        first = await _record(runtime, _image("a.png", "u1"))
        assert first.name == "a.png"

        # The same owner and uploaded bytes, recorded by "another replica": refused by the
        # index, answered with the first; nothing of the second is left, no second event.
        winner = await _record(runtime, _image("b.png", "u1"))
        assert winner.name == "a.png"
        # Another owner's identical bytes are their own image; images without a digest
        # (stored before migration 0011) never collide.
        assert (await _record(runtime, _image("c.png", "u2"))).name == "c.png"
        for name in ("d.png", "e.png"):
            assert (await _record(runtime, _image(name, "u1", None))).name == name

        async with sessions() as session:
            names = set(await session.scalars(select(Image.name)))
            events = list(await session.scalars(select(OutboxEvent.subject)))
            account = await session.get(User, "u1")
        assert names == {"a.png", "c.png", "d.png", "e.png"}
        assert sorted(events) == [f"images/{n}.png" for n in "acde"]
        assert account is not None and account.image_count == 3  # usage: a, d, e

        # A gone account is still a gone account (the foreign key), not a duplicate.
        with pytest.raises(Unauthorized):
            await _record(runtime, _image("f.png", "nobody"))
        async with sessions() as session:
            assert await queries.image_by_upload(session, "u1", DIGEST) is not None
            assert await queries.image_by_upload(session, "u2", "cd" * 32) is None
    finally:
        await engine.dispose()


def test_migration_0011_leaves_older_images_without_a_digest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url, "0010_api_keys")
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute(
            "INSERT INTO users (id, login, password_hash, created_at) VALUES ('u', 'u', 'x', ?)",
            (CREATED.isoformat(),),
        )
        db.execute(
            "INSERT INTO images (name, owner_id, visibility, content_type, width, height, "
            "frames, bytes, uploaded_bytes, sha256, created_at) "
            "VALUES ('old.png', 'u', 'public', 'image/png', 1, 1, 1, 1, 1, ?, ?)",
            ("0" * 64, CREATED.isoformat()),
        )
    upgrade(url)
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        assert db.execute("SELECT upload_sha256 FROM images").fetchall() == [(None,)]
        db.execute("UPDATE images SET upload_sha256 = ?", (DIGEST,))
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO images (name, owner_id, visibility, content_type, width, height, "
                "frames, bytes, uploaded_bytes, sha256, created_at, upload_sha256) "
                "VALUES ('new.png', 'u', 'public', 'image/png', 1, 1, 1, 1, 1, ?, ?, ?)",
                ("0" * 64, CREATED.isoformat(), DIGEST),
            )
    command.downgrade(alembic_config(url), "0010_api_keys")
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
    assert "upload_sha256" not in columns


def _lossy_sessions(sessions: Any, *, lands: bool, reachable_after: bool) -> Any:
    """Sessions whose commit fails on the wire (after committing when ``lands``), as a dropped
    connection or a failover does; after that, the database answers only if ``reachable_after``."""
    failed = False

    @asynccontextmanager
    async def factory() -> AsyncIterator[Any]:
        nonlocal failed
        if failed and not reachable_after:
            raise sa_exc.OperationalError("SELECT 1", {}, ConnectionError("connection refused"))
        async with sessions() as session:
            real_commit = session.commit

            async def commit() -> None:
                nonlocal failed
                if lands:
                    await real_commit()
                failed = True
                raise sa_exc.OperationalError("COMMIT", {}, ConnectionError("connection reset"))

            session.commit = commit
            yield session

    return factory


@pytest.mark.parametrize(
    ("lands", "reachable_after", "outcome"),
    [
        (True, True, "recorded"),  # only the reply was lost: the upload succeeded
        (False, True, "refused"),  # nothing landed: the bytes are removed as before
        (True, False, "unknown"),  # cannot tell: 503, the bytes are kept
        (False, False, "unknown"),
    ],
)
async def test_a_commit_lost_on_the_wire_is_decided_by_asking_the_database(
    url: str, lands: bool, reachable_after: bool, outcome: str
) -> None:
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            session.add(User(id="u1", login="u1", password_hash="x", created_at=CREATED))
            await session.commit()
        runtime: Any = SimpleNamespace(
            sessions=_lossy_sessions(sessions, lands=lands, reachable_after=reachable_after),
            settings=SimpleNamespace(event_source="/test"),
        )
        image = _image("a.png", "u1")
        if outcome == "recorded":
            assert await _record(runtime, image) is image
        elif outcome == "refused":
            with pytest.raises(sa_exc.OperationalError):
                await _record(runtime, image)
        else:
            with pytest.raises(RecordUnknown) as info:
                await _record(runtime, image)
            assert info.value.status == 503
        async with sessions() as session:
            names = list(await session.scalars(select(Image.name)))
        assert names == (["a.png"] if lands else [])
    finally:
        await engine.dispose()
