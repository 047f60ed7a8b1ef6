"""``account.deleted``: remove every stored object of the deleted account, in batches.

The account's transaction filled ``purge_objects`` with its images; here each batch is
removed from storage and only then its rows deleted, so a crash at any point leaves rows
whose objects may be gone already — removing a missing object is not an error, and running
the handler again finishes the job.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

from imagegate.db.models import PurgeObject
from imagegate.events.envelope import Event
from imagegate.events.handlers import HandlerContext

log = logging.getLogger("imagegate.events")


async def purge_account(event: Event, ctx: HandlerContext) -> None:
    """Remove the account's objects ``purge_batch_size`` at a time (idempotent)."""
    owner = event.owner_id
    batch_size = ctx.settings.purge_batch_size
    removed = 0
    after = ""
    while True:
        async with ctx.sessions() as session:
            rows = list(
                await session.execute(
                    select(PurgeObject.name, PurgeObject.public)
                    .where(PurgeObject.owner_id == owner, PurgeObject.name > after)
                    .order_by(PurgeObject.name)
                    .limit(batch_size)
                )
            )
        if not rows:
            break
        objects = [(str(name), bool(public)) for name, public in rows]
        await ctx.storage.delete_many(objects)  # raises: the event is offered again
        async with ctx.sessions() as session:
            await session.execute(
                delete(PurgeObject).where(
                    PurgeObject.owner_id == owner,
                    PurgeObject.name.in_([name for name, _ in objects]),
                )
            )
            await session.commit()
        removed += len(objects)
        after = objects[-1][0]
    if removed:
        log.info("purged %d objects of deleted account %s", removed, owner)
