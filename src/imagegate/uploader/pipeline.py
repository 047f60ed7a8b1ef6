"""An upload from request to record, top to bottom: admit (a place, or 503 before the body is
read) → receive with a cap → wait for a codec worker (fair between accounts) → identify,
check, compress → store durably → commit the record. Any failure leaves nothing, and a client
that leaves before the commit cancels the upload wherever it is."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from starlette.requests import Request

from imagegate.db import queries
from imagegate.db.models import Image
from imagegate.db.types import utcnow
from imagegate.errors import ClientClosed, InsufficientStorage, Unauthorized, Unavailable
from imagegate.events.envelope import EventType
from imagegate.events.outbox import emit
from imagegate.runtime import Runtime
from imagegate.security.tokens import Identity
from imagegate.uploader.body import declared_length, is_disk_full, receive_body
from imagegate.uploader.jobs import Processed

log = logging.getLogger("imagegate.uploader")

# Free space kept beyond what an upload needs: the database and other uploads write there too.
FREE_SPACE_MARGIN = 1024 * 1024
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"  # disk_full


@dataclass(frozen=True)
class Ingested:
    """An upload's outcome: the image, and whether it is new (201) or one the owner already
    had with the same uploaded bytes (200: nothing stored, no event, usage unchanged)."""

    image: Image
    created: bool


async def ingest(runtime: Runtime, request: Request, owner: Identity, visibility: str) -> Ingested:
    """Store the request's image for ``owner``, or find the owner's image with the same uploaded
    bytes (sha256 of the body as received, before any work on it); raises AppError subclasses
    for bad input. A duplicate is answered as it is, whatever ``visibility`` asks for."""
    assert runtime.admission is not None, "uploader role not started"
    settings = runtime.settings
    length = declared_length(request, settings.upload_max_bytes)  # 413 before anything
    _check_free_space(settings.tmp_dir, length)  # 507 before the body is read
    token = uuid.uuid4().hex
    src = settings.tmp_dir / f"{token}.upload"
    dst = settings.tmp_dir / f"{token}.out"
    image: Image | None = None
    stored = False
    with runtime.admission.admit(owner.user_id) as ticket:  # 503 before the body is read
        try:
            received = await receive_body(request, src, settings.upload_max_bytes)
            existing = await _uploaded_before(runtime, owner.user_id, received.sha256)
            if existing is not None:
                return _duplicate(runtime, existing, received.size)  # before any codec work
            # Identical uploads at once (a retry racing its original): the first does the
            # work, the others wait for it here and answer its image. Across replicas the
            # unique index settles it at the commit (see _record).
            async with _same_upload.held((owner.user_id, received.sha256)) as waited:
                # Looked again only after waiting for another upload of these bytes: alone
                # (the usual case) nothing ran since the first look, or the commit's unique
                # index catches what finished during it.
                if waited:
                    existing = await _uploaded_before(runtime, owner.user_id, received.sha256)
                    if existing is not None:
                        return _duplicate(runtime, existing, received.size)
                async with _cancelled_when_client_leaves(request):
                    async with ticket.worker():
                        result = await _process(runtime, src, dst)
                    src.unlink(missing_ok=True)  # no longer needed: free the space now
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
                        upload_sha256=received.sha256,
                        created_at=utcnow(),
                    )
                    stored = True  # from here on the bytes may be in storage: removed on failure
                    await _put(runtime, image, dst)
                winner = await _record(runtime, image)
            if winner is not image:
                # Another replica recorded the same upload first: ours is a copy, removed.
                with anyio.CancelScope(shield=True):
                    await remove_quietly(runtime, image)
                stored = False
                return _duplicate(runtime, winner, received.size)
        except BaseException as exc:
            if stored and image is not None and not isinstance(exc, RecordUnknown):
                # Bytes first, record second: on any failure (even cancellation) bytes go too.
                with anyio.CancelScope(shield=True):
                    await remove_quietly(runtime, image)
            raise
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)
    assert image is not None
    runtime.metrics.bytes_received.inc(image.uploaded_bytes)
    runtime.metrics.bytes_stored.inc(image.bytes)
    return Ingested(image, created=True)


def _duplicate(runtime: Runtime, image: Image, received: int) -> Ingested:
    """The owner's image with these uploaded bytes: accepted (its bytes count as received),
    nothing stored."""
    runtime.metrics.bytes_received.inc(received)
    return Ingested(image, created=False)


class _KeyedLocks:
    """An asyncio lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def held(self, key: tuple[str, str]) -> AsyncIterator[bool]:
        """Hold ``key``'s lock inside; yields whether others held or waited for it first."""
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield users > 0
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


_same_upload = _KeyedLocks()  # (owner, upload sha256) → the upload doing the work


async def _uploaded_before(runtime: Runtime, owner_id: str, upload_sha256: str) -> Image | None:
    async with runtime.sessions() as session:
        return await queries.image_by_upload(session, owner_id, upload_sha256)


async def remove_quietly(
    runtime: Runtime, image: Image, variants: Sequence[tuple[str, bool]] = ()
) -> None:
    """Delete stored bytes whose record is gone (or never came), with its variants' objects;
    if storage refuses now, they are orphans that start-up reconciliation removes later."""
    try:
        if variants:
            await runtime.storage.delete_many([(image.name, image.public), *variants])
        else:
            await runtime.storage.delete(image.name, public=image.public)
    except OSError as exc:
        log.warning(
            "could not remove %s now (%s); it will be removed as an orphan", image.name, exc
        )


def _check_free_space(folder: Path, length: int | None) -> None:
    """507 at once when the upload (and its processed copy, never larger unless rotated)
    cannot fit; a body of unknown length is checked while it is written."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return  # the writes will tell
    free = st.f_bavail * st.f_frsize
    need = FREE_SPACE_MARGIN + 2 * (length or 0)
    if free < need:
        log.warning("upload refused: %d bytes free in %s, %d needed", free, folder, need)
        raise InsufficientStorage()


@asynccontextmanager
async def _cancelled_when_client_leaves(request: Request) -> AsyncIterator[None]:
    """Run the block until it ends or the client disconnects; then ClientClosed (499).

    Once the body is read, the next ASGI message is ``http.disconnect`` (when the client
    goes), so a task waits for it and cancels the block: a queued upload leaves the line, a
    running one stops its worker, and nothing is stored for a client who will never hear."""
    gone = False
    with anyio.CancelScope() as scope:

        async def watch() -> None:
            nonlocal gone
            while True:
                try:
                    message = await request.receive()
                except Exception:  # a receive that fails cannot tell us more
                    return
                if message["type"] == "http.disconnect":
                    gone = True
                    scope.cancel()
                    return
                if message["type"] != "http.request" or not message.get("body"):
                    return  # only a disconnect is expected after the body

        # A plain task, not a task group: the block's own errors must pass through unwrapped.
        watcher = asyncio.create_task(watch())
        _watchers.add(watcher)
        watcher.add_done_callback(_watchers.discard)
        try:
            yield
        finally:
            watcher.cancel()
    if gone:
        raise ClientClosed("client closed the connection before the upload was stored")


_watchers: set[asyncio.Task[None]] = set()  # running watchers, referenced until they end


async def _process(runtime: Runtime, src: Path, dst: Path) -> Processed:
    assert runtime.codec is not None
    try:
        return await runtime.codec.process(src, dst)
    except OSError as exc:  # raised in the worker writing ``dst``, passed back to us
        if is_disk_full(exc):
            log.warning("upload refused: disk full while processing (%s)", exc)
            raise InsufficientStorage() from exc
        raise


async def _put(runtime: Runtime, image: Image, path: Path) -> None:
    try:
        await runtime.storage.put(
            image.name, path, public=image.public, content_type=image.content_type
        )
    except OSError as exc:
        if is_disk_full(exc):
            log.warning("upload refused: storage is full (%s)", exc)
            raise InsufficientStorage() from exc
        raise Unavailable("image storage is unavailable; try again later") from exc


class RecordUnknown(Unavailable):
    """The commit failed on the wire and the database cannot be asked whether it landed: the
    bytes stay (a record without bytes would be a lasting broken image and, being the owner's
    upload of those bytes, the answer to every retry); if no record came, they are an orphan
    that reconciliation removes after its grace period."""

    def __init__(self) -> None:
        super().__init__("the database is unavailable; try again later")


# A commit's reply can be lost after the database committed (a dropped connection, a failover):
# these errors say nothing of whether it landed.
_COMMIT_UNKNOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, ConnectionError, OSError)


async def _record(runtime: Runtime, image: Image) -> Image:
    """Commit the record with its ``image.stored`` event; returns it, or the owner's image
    committed meanwhile with the same uploaded bytes (then nothing of ours is recorded).
    Shielded: a commit cancelled midway could land after we removed the bytes (a record
    without bytes); the client leaving this late changes nothing."""
    try:
        with anyio.CancelScope(shield=True):
            async with runtime.sessions() as session:
                await queries.add_image(session, image)
                emit(
                    session,
                    EventType.IMAGE_STORED,
                    owner_id=image.owner_id,
                    subject=f"images/{image.name}",
                    data=stored_event_data(image),
                    source=runtime.settings.event_source,
                )
                await session.commit()
    except sa_exc.IntegrityError as exc:
        # Either the same upload's unique index (owner, upload_sha256) or the owner's foreign
        # key (the account was deleted meanwhile): the database says which by what it holds.
        assert image.upload_sha256 is not None
        with anyio.CancelScope(shield=True):
            winner = await _uploaded_before(runtime, image.owner_id, image.upload_sha256)
        if winner is not None:
            return winner
        raise Unauthorized("account no longer exists") from exc
    except _COMMIT_UNKNOWN as exc:
        if isinstance(exc, sa_exc.OperationalError) and _database_full(exc):
            log.warning("upload refused: the database's disk is full (%s)", exc.orig)
            raise InsufficientStorage() from exc
        with anyio.CancelScope(shield=True):
            landed = await _committed(runtime, image.name)
        if landed is None:
            log.warning("recording %s failed (%s); its bytes are kept", image.name, exc)
            raise RecordUnknown() from exc
        if not landed:
            raise
        log.warning("recording %s: the reply was lost (%s), the record is there", image.name, exc)
    return image


async def _committed(runtime: Runtime, name: str) -> bool | None:
    """Whether the image's record is in the database; None when it cannot be asked."""
    try:
        async with runtime.sessions() as session:
            return await session.scalar(select(Image.name).where(Image.name == name)) is not None
    except _COMMIT_UNKNOWN:
        return None


def image_url(image: Image) -> str:
    """Public images are anyone's at /images/; private ones only their owner's."""
    return ("/images/" if image.public else "/v1/user/") + image.name


def stored_event_data(image: Image) -> dict[str, object]:
    """``image.stored``'s data: the record as its owner sees it (docs/events/)."""
    return {
        "name": image.name,
        "owner": image.owner_id,
        "content_type": image.content_type,
        "bytes": image.bytes,
        "uploaded_bytes": image.uploaded_bytes,
        "width": image.width,
        "height": image.height,
        "frames": image.frames,
        "sha256": image.sha256,
        "visibility": image.visibility,
        "created_at": image.created_at.isoformat(),
        "url": image_url(image),
    }


def _database_full(exc: sa_exc.DBAPIError) -> bool:
    orig: BaseException | None = exc.orig
    seen: set[int] = set()
    # Driver adapters wrap the driver's own exception: look down the chain.
    while orig is not None and id(orig) not in seen:
        seen.add(id(orig))
        if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if getattr(orig, "sqlstate", None) == _PG_DISK_FULL:
            return True
        orig = orig.__cause__ or orig.__context__
    return "database or disk is full" in str(exc)
