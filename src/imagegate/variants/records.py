"""Variant records: looking one up to serve it, adding the ones made, listing them to delete.

Callers own the session and the transaction, as in :mod:`imagegate.db.queries` (``touch``, a
write of its own on the serving path, commits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy import insert as insert_statement
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import Image, Variant
from imagegate.db.reads import Reader
from imagegate.db.types import utcnow

Row = dict[str, Any]  # a Variant's columns, for a bulk insert


@dataclass(frozen=True)
class StoredVariant:
    """What serving a variant needs (the same attributes serving an image reads)."""

    name: str
    image_name: str
    owner_id: str
    content_type: str
    bytes: int
    sha256: str
    public: bool
    custom: bool
    used_at: datetime


def object_name(image_name: str, key: str, ext: str) -> str:
    """``<uuid>.<key>.<ext>``: beside the original, listed with it, never an image name."""
    return f"{image_name.partition('.')[0]}.{key}.{ext}"


_VARIANTS = select(
    Variant.name,
    Variant.image_name,
    Variant.owner_id,
    Variant.content_type,
    Variant.bytes,
    Variant.sha256,
    Variant.public,
    Variant.custom,
    Variant.used_at,
)
_VARIANT = _VARIANTS.where(Variant.name == bindparam("name"))


async def variant(reader: Reader, name: str) -> StoredVariant | None:
    """The variant stored as ``name``, if its record exists."""
    row = await reader.first(_VARIANT, name=name)
    return StoredVariant(*row) if row is not None else None


async def lock_image(session: AsyncSession, image_name: str) -> bool:
    """Lock the image's row for this transaction (False: it is gone). PostgreSQL: the row
    lock a deletion takes too. SQLite: the database's write lock, taken by a no-op write."""
    if session.get_bind().dialect.name == "postgresql":
        query = select(Image.name).where(Image.name == image_name).with_for_update()
        return await session.scalar(query) is not None
    done = await session.execute(
        update(Image).where(Image.name == image_name).values(name=Image.name)
    )
    return bool(getattr(done, "rowcount", 0))


async def recorded(session: AsyncSession, names: Sequence[str]) -> dict[str, StoredVariant]:
    """The variants among ``names`` that have records."""
    rows = await session.execute(_VARIANTS.where(Variant.name.in_(list(names))))
    return {row[0]: StoredVariant(*row) for row in rows}


async def insert(session: AsyncSession, rows: Sequence[Row]) -> None:
    if rows:
        await session.execute(insert_statement(Variant).values(list(rows)))


async def made_keys(session: AsyncSession, image_name: str) -> set[tuple[str, str]]:
    """``(key, format)`` of the variants the image has."""
    rows = await session.execute(
        select(Variant.key, Variant.format).where(Variant.image_name == image_name)
    )
    return {(str(k), str(f)) for k, f in rows}


async def forget_presets_except(
    session: AsyncSession, image_name: str, presets: Sequence[str]
) -> list[tuple[str, bool]]:
    """Delete the records of the image's preset variants whose preset is no longer configured;
    ``(name, public)`` of those deleted (custom sizes are left to pruning)."""
    gone = await session.execute(
        delete(Variant)
        .where(
            Variant.image_name == image_name,
            Variant.custom.is_(False),
            Variant.key.not_in(list(presets)),
        )
        .returning(Variant.name, Variant.public)
    )
    return [(str(n), bool(p)) for n, p in gone]


async def all_variant_sides(session: AsyncSession) -> dict[str, bool]:
    """Every variant's name and whether it is public."""
    rows = await session.execute(select(Variant.name, Variant.public))
    return {str(name): bool(public) for name, public in rows}


async def touch(session: AsyncSession, found: StoredVariant, keep_days: float) -> None:
    """Note that a custom size was served (for removing unused ones): written at most once a
    day (a quarter of the keep period when that is shorter), so a hot one costs no writes."""
    now = utcnow()
    step = min(timedelta(days=1), timedelta(days=keep_days / 4))
    if found.custom and now - found.used_at > step:
        await session.execute(update(Variant).where(Variant.name == found.name).values(used_at=now))
        await session.commit()


async def unused_custom(session: AsyncSession, before: datetime, limit: int) -> list[Variant]:
    """Custom sizes last served before ``before``, oldest first."""
    query = (
        select(Variant)
        .where(Variant.custom.is_(True), Variant.used_at < before)
        .order_by(Variant.used_at)
        .limit(limit)
    )
    return list(await session.scalars(query))


async def forget_unused(
    session: AsyncSession, names: Sequence[str], before: datetime
) -> list[tuple[str, bool]]:
    """Delete the records of ``names`` still unused since ``before``; ``(name, public)`` of
    those deleted."""
    gone = await session.execute(
        delete(Variant)
        .where(Variant.name.in_(list(names)), Variant.used_at < before)
        .returning(Variant.name, Variant.public)
    )
    return [(str(n), bool(p)) for n, p in gone]


async def evict_custom(session: AsyncSession, image_name: str, keep: int) -> list[tuple[str, bool]]:
    """Delete the records of the image's least recently used custom sizes beyond ``keep``;
    ``(name, public)`` of those deleted."""
    ranked = (
        select(Variant.name)
        .where(Variant.image_name == image_name, Variant.custom.is_(True))
        .order_by(Variant.used_at.desc(), Variant.name)
        .offset(max(0, keep))
    )
    gone = await session.execute(
        delete(Variant)
        .where(Variant.name.in_(ranked.scalar_subquery()))
        .returning(Variant.name, Variant.public)
    )
    return [(str(n), bool(p)) for n, p in gone]
