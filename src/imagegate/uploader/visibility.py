"""Changing an image's visibility: its bytes and its variants' move to the other side of the
public/private divide with its record.

The order never exposes a private image, even when a step fails or the process dies:

- to private: copy every object to the private side, delete the public copies, then commit
  the record. A failure before the commit leaves the record public with some bytes already
  private only (a broken public link until the change is retried), never a private record
  with public bytes.
- to public: copy every object to the public side, commit the record, then delete the
  private copies. The owner asked for the image to be public; a failure before the commit
  removes the public copies it made.

The image's row lock is held throughout, so a variant being made meanwhile is stored on the
side the record says once it gets the lock (the maker reads the visibility under it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import Image, Variant
from imagegate.errors import Unavailable
from imagegate.events.envelope import EventType
from imagegate.events.outbox import emit
from imagegate.storage.base import Storage
from imagegate.variants import records
from imagegate.variants.presets import variant_formats
from imagegate.variants.records import object_name

log = logging.getLogger("imagegate.uploader")


async def change_visibility(
    session: AsyncSession,
    storage: Storage,
    name: str,
    owner_id: str,
    public: bool,
    *,
    source: str,
    preset_keys: Sequence[str] = (),
) -> Image | None:
    """Make the owner's image public or private; the image as it is now (None: not theirs or
    gone). Commits the session. Made private, the public side also loses the objects the
    presets ``preset_keys`` would have, recorded or not (one stored by a maker that died
    before recording it would otherwise stay public until reconciliation)."""
    # The image's lock (SELECT … FOR UPDATE, or SQLite's write lock), as every writer of its
    # objects takes it.
    if not await records.lock_image(session, name):
        await session.rollback()
        return None
    image = await session.scalar(
        select(Image).where(Image.name == name, Image.owner_id == owner_id)
    )
    if image is None:
        await session.rollback()
        return None
    if image.public == public:
        await session.commit()
        return image
    variants = list(await session.scalars(select(Variant.name).where(Variant.image_name == name)))
    # With one folder for both sides (local storage) only the records change.
    objects = [name, *variants] if storage.separates_visibility else []
    previous = image.visibility
    try:
        if objects:
            await storage.copy_to(objects, public=public)
            if not public:
                possible = [
                    object_name(name, key, ext)
                    for key in preset_keys
                    for ext in variant_formats(name.rsplit(".", 1)[1])
                ]
                unrecorded = [n for n in possible if n not in variants]
                await storage.delete_many([(n, True) for n in [*objects, *unrecorded]])
        image.visibility = "public" if public else "private"
        await session.execute(
            update(Variant).where(Variant.image_name == name).values(public=public)
        )
        emit(
            session,
            EventType.IMAGE_VISIBILITY_CHANGED,
            owner_id=owner_id,
            subject=f"images/{name}",
            data={
                "name": name,
                "owner": owner_id,
                "visibility": image.visibility,
                "previous": previous,
            },
            source=source,
        )
        await session.commit()
    except BaseException as exc:
        if public and objects:  # the record stays private: so must its bytes
            with contextlib.suppress(Exception):
                await storage.delete_many([(n, True) for n in objects])
        if isinstance(exc, OSError):  # storage (or its connection) failed: nothing changed
            raise Unavailable("image storage is unavailable; try again shortly", 5) from exc
        raise
    if public and objects:
        await _remove_private_leftovers(session, storage, name, objects)
    await session.refresh(image)
    return image


async def _remove_private_leftovers(
    session: AsyncSession, storage: Storage, name: str, objects: list[str]
) -> None:
    """The private copies of an image just made public, removed under its lock again and
    only while it is still public: a change back to private meanwhile has written fresh
    private copies under the same names."""
    try:
        if await records.lock_image(session, name):
            image = await session.get(Image, name, populate_existing=True)
            if image is not None and image.public:
                await storage.delete_many([(n, False) for n in objects])
        await session.commit()
    except Exception as exc:  # leftovers on the private side: reconciliation removes them
        await session.rollback()
        log.warning("private copies of %s not removed now: %s", name, exc)
