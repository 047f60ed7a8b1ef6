"""Queries on users and images. Callers own the session and the transaction; the hot-path
point reads take a :class:`~imagegate.db.reads.Reader` instead."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import Image, User, Variant
from imagegate.db.reads import Reader


@dataclass(frozen=True)
class Account:
    """A user as shown to them: no password hash, with what their images add up to."""

    id: str
    login: str
    created_at: datetime
    images: int
    bytes: int


@dataclass(frozen=True)
class StoredImage:
    """What serving an image needs to know about it."""

    name: str
    owner_id: str
    visibility: str
    content_type: str
    bytes: int
    sha256: str

    @property
    def public(self) -> bool:
        return self.visibility == "public"


# Statements built once: SQLAlchemy caches their compiled form, and the hot path pays only for
# binding the parameters.
_ACCOUNTS = select(User.id, User.login, User.created_at, User.image_count, User.image_bytes)
_ACCOUNT = _ACCOUNTS.where(User.id == bindparam("user_id"))
_USER_EXISTS = select(User.id).where(User.id == bindparam("user_id"))
_STORED_IMAGE = select(
    Image.name, Image.owner_id, Image.visibility, Image.content_type, Image.bytes, Image.sha256
).where(Image.name == bindparam("name"))


def _account(row: tuple[str, str, datetime, int, int]) -> Account:
    return Account(row[0], row[1], row[2], int(row[3]), int(row[4]))


async def user_by_login(session: AsyncSession, login: str) -> User | None:
    return await session.scalar(select(User).where(User.login == login))


async def user_exists(reader: Reader, user_id: str) -> bool:
    return await reader.first(_USER_EXISTS, user_id=user_id) is not None


async def account(reader: Reader, user_id: str) -> Account | None:
    row = await reader.first(_ACCOUNT, user_id=user_id)
    return None if row is None else _account(row)


async def accounts(session: AsyncSession) -> list[Account]:
    """Every account, by login."""
    return [_account(row) for row in await session.execute(_ACCOUNTS.order_by(User.login))]


async def password_hash_locked(session: AsyncSession, user_id: str) -> str | None:
    """The account's password hash, its row locked for this transaction (None: gone).
    PostgreSQL: a row lock; SQLite: the database's write lock, taken by a no-op write."""
    if session.get_bind().dialect.name == "postgresql":
        query = select(User.password_hash).where(User.id == user_id).with_for_update()
        return await session.scalar(query)
    await session.execute(update(User).where(User.id == user_id).values(id=User.id))
    return await session.scalar(select(User.password_hash).where(User.id == user_id))


async def set_password_hash(session: AsyncSession, user_id: str, password_hash: str) -> None:
    await session.execute(
        update(User).where(User.id == user_id).values(password_hash=password_hash)
    )


async def image_for_viewer(reader: Reader, name: str, owner_id: str | None) -> StoredImage | None:
    """The image if this viewer may see it: its owner always, anyone when it is public."""
    row = await reader.first(_STORED_IMAGE, name=name)
    if row is None:
        return None
    image = StoredImage(*row)
    if owner_id is None:
        return image if image.public else None
    return image if image.owner_id == owner_id else None


def encode_cursor(created_at: datetime, key: str) -> str:
    """A keyset cursor on (created_at, key) for a newest-first listing (images, deliveries)."""
    raw = json.dumps([created_at.isoformat(), key]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor this service made: a cursor is
    client input, so every field is checked for the type and form ``encode_cursor`` gives it
    (a zone-aware timestamp that converts to UTC, an ASCII name)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("not a two-item list")
        created, name = value
        if not isinstance(created, str) or not isinstance(name, str):
            raise ValueError("fields are not strings")
        if not name.isascii() or len(name) > 128:
            raise ValueError("not an image name")  # ours are <uuid>.<ext>
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("timestamp without a zone")
        # Within a day of datetime's range, converting to UTC can overflow.
        return when.astimezone(UTC), name
    except (binascii.Error, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ValueError("invalid cursor") from exc


async def images_page(
    session: AsyncSession, owner_id: str, limit: int, after: tuple[datetime, str] | None
) -> tuple[list[Image], str | None]:
    """Newest first, keyset-paginated on (created_at, name)."""
    query = select(Image).where(Image.owner_id == owner_id)
    if after is not None:
        created, name = after
        query = query.where(
            or_(Image.created_at < created, and_(Image.created_at == created, Image.name < name))
        )
    rows = list(
        await session.scalars(
            query.order_by(Image.created_at.desc(), Image.name.desc()).limit(limit + 1)
        )
    )
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = encode_cursor(last.created_at, last.name) if last else None
    return rows[:limit], next_cursor


async def image_by_upload(session: AsyncSession, owner_id: str, upload_sha256: str) -> Image | None:
    """The owner's image whose uploaded bytes had this sha256 (same upload twice), or None."""
    return await session.scalar(
        select(Image).where(Image.owner_id == owner_id, Image.upload_sha256 == upload_sha256)
    )


async def add_image(session: AsyncSession, image: Image) -> None:
    """Insert an image record and add it to its owner's usage."""
    session.add(image)
    await _count(session, image.owner_id, 1, image.bytes)


async def delete_image(
    session: AsyncSession, name: str, owner_id: str, variants: list[tuple[str, bool]] | None = None
) -> Image | None:
    """Delete the owner's image record and take it off their usage; returns it, or None when
    there is no such image. Its variants' records go first, their ``(name, public)`` appended
    to ``variants``: with the image locked (PostgreSQL) or the write lock taken by that first
    write (SQLite), a variant being recorded meanwhile is either in the list or refused."""
    image = await session.scalar(
        select(Image).where(Image.name == name, Image.owner_id == owner_id).with_for_update()
    )
    if image is not None:
        gone = await session.execute(
            delete(Variant)
            .where(Variant.image_name == name)
            .returning(Variant.name, Variant.public)
        )
        if variants is not None:
            variants.extend((str(n), bool(p)) for n, p in gone)
        await session.delete(image)
        await _count(session, owner_id, -1, -image.bytes)
    return image


async def _count(session: AsyncSession, owner_id: str, images: int, size: int) -> None:
    # Relative updates: concurrent uploads of one user serialize on the row, none is lost.
    await session.execute(
        update(User)
        .where(User.id == owner_id)
        .values(image_count=User.image_count + images, image_bytes=User.image_bytes + size)
    )


async def images_of(session: AsyncSession, owner_id: str) -> list[Image]:
    return list(await session.scalars(select(Image).where(Image.owner_id == owner_id)))


async def all_image_sides(session: AsyncSession) -> dict[str, bool]:
    """Every image's name and whether it is public."""
    rows = await session.execute(select(Image.name, Image.visibility))
    return {str(name): visibility == "public" for name, visibility in rows}
