"""Make storage and database agree after a crash: stored bytes without a record are removed.

Uploads store bytes before committing the record and deletes remove the record first, so
a crash can leave an orphan file but never a record without bytes. A visibility change copies
first and removes the old side's copies last (uploader/visibility.py): a crash can leave a
copy on the side the record does not say, removed here when the record's side has one too.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.db import queries
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
        if known[obj.name] in seen[obj.name]:  # the record's side has it: a leftover copy
            await storage.delete(obj.name, public=obj.public)
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
