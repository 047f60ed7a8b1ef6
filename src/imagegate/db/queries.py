"""Queries on users and images. Callers own the session and the transaction."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import Image, User


@dataclass(frozen=True)
class Usage:
    images: int
    bytes: int


async def user_by_login(session: AsyncSession, login: str) -> User | None:
    return await session.scalar(select(User).where(User.login == login))


async def user_by_id(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def user_exists(session: AsyncSession, user_id: str) -> bool:
    return await session.scalar(select(User.id).where(User.id == user_id)) is not None


async def set_password_hash(session: AsyncSession, user_id: str, password_hash: str) -> None:
    await session.execute(
        update(User).where(User.id == user_id).values(password_hash=password_hash)
    )


async def user_usage(session: AsyncSession, user_id: str) -> Usage:
    row = (
        await session.execute(
            select(func.count(Image.name), func.coalesce(func.sum(Image.bytes), 0)).where(
                Image.owner_id == user_id
            )
        )
    ).one()
    return Usage(int(row[0]), int(row[1]))


async def list_users(session: AsyncSession) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.login)))


async def image_for_viewer(session: AsyncSession, name: str, owner_id: str | None) -> Image | None:
    """The image if this viewer may see it: its owner always, anyone when it is public."""
    image = await session.get(Image, name)
    if image is None:
        return None
    if owner_id is None:
        return image if image.visibility == "public" else None
    return image if image.owner_id == owner_id else None


def encode_cursor(image: Image) -> str:
    raw = json.dumps([image.created_at.isoformat(), image.name]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor this service made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, name = json.loads(raw)
        return datetime.fromisoformat(created), str(name)
    except (binascii.Error, ValueError, TypeError) as exc:
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
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def delete_image(session: AsyncSession, name: str, owner_id: str) -> Image | None:
    """Delete the owner's image record; returns it, or None when there is no such image."""
    image = await session.scalar(
        select(Image).where(Image.name == name, Image.owner_id == owner_id).with_for_update()
    )
    if image is not None:
        await session.delete(image)
    return image


async def images_of(session: AsyncSession, owner_id: str) -> list[Image]:
    return list(await session.scalars(select(Image).where(Image.owner_id == owner_id)))


async def all_image_names(session: AsyncSession) -> set[str]:
    return set(await session.scalars(select(Image.name)))
