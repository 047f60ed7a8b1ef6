"""An upload from request to record, top to bottom: receive with a cap → identify, check,
compress (codec worker) → store durably → commit the record. Any failure leaves nothing."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import anyio
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request

from imagegate.db import queries
from imagegate.db.models import Image
from imagegate.db.types import utcnow
from imagegate.errors import Unauthorized, Unavailable
from imagegate.runtime import Runtime
from imagegate.security.tokens import Identity
from imagegate.uploader.body import receive_body

log = logging.getLogger("imagegate.uploader")


async def ingest(runtime: Runtime, request: Request, owner: Identity, visibility: str) -> Image:
    """Store the request's image for ``owner``; raises AppError subclasses for bad input."""
    assert runtime.codec is not None, "uploader role not started"
    token = uuid.uuid4().hex
    src = runtime.settings.tmp_dir / f"{token}.upload"
    dst = runtime.settings.tmp_dir / f"{token}.out"
    try:
        await receive_body(request, src, runtime.settings.upload_max_bytes)
        result = await runtime.codec.process(src, dst)
        image = Image(
            name=f"{uuid.uuid4()}.{result.ext}",
            owner_id=owner.user_id,
            visibility=visibility,
            content_type=result.content_type,
            width=result.width,
            height=result.height,
            frames=result.frames,
            bytes=result.bytes,
            uploaded_bytes=result.uploaded_bytes,
            sha256=result.sha256,
            created_at=utcnow(),
        )
        await _store(runtime, image, dst)
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
    runtime.metrics.bytes_received.inc(result.uploaded_bytes)
    runtime.metrics.bytes_stored.inc(result.bytes)
    return image


async def remove_quietly(runtime: Runtime, image: Image) -> None:
    """Delete stored bytes whose record is gone (or never came); if storage refuses now, the
    object is an orphan that start-up reconciliation removes later."""
    try:
        await runtime.storage.delete(image.name, public=image.public)
    except OSError as exc:
        log.warning(
            "could not remove %s now (%s); it will be removed as an orphan", image.name, exc
        )


async def _store(runtime: Runtime, image: Image, path: Path) -> None:
    try:
        await runtime.storage.put(
            image.name, path, public=image.public, content_type=image.content_type
        )
    except OSError as exc:
        raise Unavailable("image storage is unavailable; try again later") from exc
    try:
        async with runtime.sessions() as session:
            await queries.add_image(session, image)
            await session.commit()
    except BaseException as exc:
        # Bytes first, record second: on any failure (even cancellation) the bytes go too.
        with anyio.CancelScope(shield=True):
            await remove_quietly(runtime, image)
        if isinstance(exc, IntegrityError):
            raise Unauthorized("account no longer exists") from exc
        raise
