"""Make storage and database agree after a crash: stored bytes without a record are removed.

Uploads store bytes before committing the record and deletes remove the record first, so
a crash can leave an orphan file but never a record without bytes.
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
    """Delete objects with no record that were last written before ``older_than`` (epoch)."""
    async with sessions() as session:
        known = await queries.all_image_names(session)
        variants = await records.all_variant_names(session)
    removed = 0
    seen = set()
    async for obj in storage.list():
        seen.add(obj.name)
        if obj.name not in known and obj.name not in variants and obj.modified < older_than:
            await storage.delete(obj.name, public=obj.public)
            removed += 1
    missing = known - seen
    if removed:
        log.warning("removed %d stored objects that had no record (left by a crash)", removed)
    if missing:
        log.error("%d image records have no stored bytes, e.g. %s", len(missing), min(missing))
    return removed
