"""Make storage and database agree after a crash: stored bytes without a record are removed.

Uploads store bytes before committing the record and deletes remove the record first, so
a crash can leave an orphan file but never a record without bytes. A visibility change copies
first and removes the old side's copies last (uploader/visibility.py): a crash can leave a
copy on the side the record does not say, removed here when the record's side has one too.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.db import queries
from imagegate.db.models import Image, Variant
from imagegate.storage.base import Storage
from imagegate.variants import records

log = logging.getLogger("imagegate.storage")


async def remove_orphans(
    storage: Storage, sessions: async_sessionmaker[AsyncSession], older_than: float
) -> int:
    """Delete objects with no record, and copies on the side their record does not say (a
    visibility change cut off), that were last written before ``older_than`` (epoch)."""
    async with sessions() as session:
        known = await queries.all_image_sides(session)
        known.update(await records.all_variant_sides(session))
    separate = storage.separates_visibility
    removed = 0
    seen: dict[str, set[bool]] = {}
    elsewhere = []  # (object, its record's side) when the object is on the other side
    async for obj in storage.list():
        seen.setdefault(obj.name, set()).add(obj.public)
        public = known.get(obj.name)
        if public is None:
            if obj.modified < older_than:
                await storage.delete(obj.name, public=obj.public)
                removed += 1
        elif separate and obj.public != public and obj.modified < older_than:
            elsewhere.append(obj)
    for obj in elsewhere:
        if known[obj.name] in seen[obj.name]:  # the record's side had it: a leftover copy
            if await _remove_leftover(storage, sessions, obj.name, obj.public):
                removed += 1
        else:
            log.error(
                "%s is stored %s but its record says %s (a visibility change cut off): "
                "change its visibility again",
                obj.name,
                "public" if obj.public else "private",
                "public" if known[obj.name] else "private",
            )
    if removed:
        log.warning(
            "removed %d stored objects that had no record, or a copy on the side their record "
            "does not say (left by a crash)",
            removed,
        )
    missing = {n for n in known if n not in seen and n.count(".") == 1}  # images, not variants
    if missing:
        log.error("%d image records have no stored bytes, e.g. %s", len(missing), min(missing))
    return removed


async def _remove_leftover(
    storage: Storage, sessions: async_sessionmaker[AsyncSession], name: str, side: bool
) -> bool:
    """Remove the copy of ``name`` on ``side`` if, under its image's lock and as of now, its
    record says the other side and that side has the object. The listing is minutes old on a
    big bucket: a visibility change meanwhile may have made this copy the only one."""
    async with sessions() as session:
        image_name = name
        if name.count(".") == 2:  # a variant: its image's lock
            found = await session.scalar(select(Variant.image_name).where(Variant.name == name))
            if found is None:
                return False
            image_name = found
        if not await records.lock_image(session, image_name):
            return False
        public: bool | None
        if image_name == name:
            visibility = await session.scalar(select(Image.visibility).where(Image.name == name))
            public = None if visibility is None else visibility == "public"
        else:
            public = await session.scalar(select(Variant.public).where(Variant.name == name))
        if public is None or public == side or not await storage.exists(name, public=public):
            await session.rollback()
            return False
        await storage.delete(name, public=side)
        await session.commit()
        return True
