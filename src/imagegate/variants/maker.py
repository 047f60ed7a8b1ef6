"""Making variants: fetch the original, render in the variant workers, store, record.

Two callers: the ``image.stored`` handler makes every preset after an upload (the worker, or
the inline dispatcher in embedded mode), and serving makes one missing variant on demand.
Concurrent requests for the same missing variant in one process wait for one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.db.models import Image
from imagegate.db.types import utcnow
from imagegate.errors import AppError, Unavailable
from imagegate.metrics import Metrics
from imagegate.settings import Settings
from imagegate.storage.base import Storage
from imagegate.uploader.jobs import Rendered, VariantJob
from imagegate.uploader.pool import CodecPool
from imagegate.variants import records
from imagegate.variants.presets import Preset, Size, parse_presets, variant_formats
from imagegate.variants.records import StoredVariant
from imagegate.variants.yielding import UploadsFirst

log = logging.getLogger("imagegate.variants")

QUEUE_SIZE = 1000  # images waiting for their presets, per process
STALE_TMP_SECONDS = 3600  # work folders older than this at start are a crash's leftovers
PRUNE_EVERY_SECONDS = 3600
PRUNE_BATCH = 500
# Variants made on demand at once per process (the rest answer 503 + Retry-After): each one
# holds a copy of its original and a place in the variant workers' queue.
ON_DEMAND_MAX = 16
# Custom sizes one image may have at once (each a file): an owner's unsigned sizes are
# otherwise unbounded. Beyond it, the least recently used custom size of the image goes.
CUSTOM_PER_IMAGE = 32


def custom_key(size: Size) -> str:
    """A custom size's key: ``<w>x<h>c`` (cover) or ``<w>x<h>n`` (contain); it starts with a
    digit, so it is never a preset's name."""
    return f"{size.width}x{size.height}{'c' if size.fit == 'cover' else 'n'}"


class VariantMaker:
    """Makes and records variants for one process (its own pool of variant workers)."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.presets: dict[str, Preset] = {
            p.name: p for p in parse_presets(settings.variant_presets)
        }
        self._sessions = sessions
        self._storage = storage
        self._metrics = metrics
        self._pool: CodecPool | None = None
        self._uploads_first = UploadsFirst(
            settings.variant_yield_to_uploads, metrics.variants_paused
        )
        self._inflight: dict[str, asyncio.Task[list[StoredVariant]]] = {}
        self._work = settings.data_dir / "variants-tmp"
        self._queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self._queued: set[str] = set()  # names in the queue
        self._makers: list[asyncio.Task[None]] = []
        self._pruner: asyncio.Task[None] | None = None

    def _codecs(self) -> CodecPool:
        # Started on first use: a process that never makes a variant has no extra workers.
        if self._pool is None:
            self._work.mkdir(parents=True, exist_ok=True, mode=0o700)
            _remove_stale(self._work)
            self._pool = CodecPool.from_settings(self.settings, variants=True)
            self._uploads_first.add(self._pool)
        return self._pool

    def uploads_in_progress(self, count: int) -> None:
        """This process's uploads in progress (its Admission's listener): while there are
        some, the variant workers mostly stop (variants/yielding.py)."""
        self._uploads_first.uploads(count)

    async def schedule(self, image_name: str) -> None:
        """Queue the image's presets for the background makers and return at once: an event's
        other handlers (webhooks) and the events after it never wait for the pictures. An
        image already queued is not queued twice; with the queue full, it is left out (logged):
        the event path must not slow down to the variant workers' pace. Either way, and for a
        job lost to a crash, the variants are made on demand when first asked for, or by
        ``imagegate variants rebuild``."""
        if not self._makers:
            self._makers = [
                asyncio.create_task(self._background(), name=f"variants-{i}")
                for i in range(self.settings.variant_workers)
            ]
        if image_name in self._queued:
            return
        try:
            self._queue.put_nowait(image_name)
        except asyncio.QueueFull:
            log.warning("variant queue full: %s left to be made on demand", image_name)
            return
        self._queued.add(image_name)

    async def _background(self) -> None:
        while True:
            name = await self._queue.get()
            self._queued.discard(name)
            try:
                await self.make_presets(name)
            except AppError as exc:  # the workers refused the original: no point retrying
                log.warning("no variants for %s: %s", name, exc.message)
            except Exception:
                log.exception("variants of %s not made now (made on demand later)", name)
            finally:
                self._queue.task_done()

    def start_pruning(self) -> None:
        """Remove unused custom sizes now and every hour (in the process that handles events)."""
        if self._pruner is None:
            self._pruner = asyncio.create_task(self._prune_forever(), name="variants-prune")

    async def _prune_forever(self) -> None:
        while True:
            try:
                removed = await self.prune_unused()
                if removed:
                    log.info(
                        "removed %d custom-size variants unused for %g days",
                        removed,
                        self.settings.variant_custom_keep_days,
                    )
            except Exception as exc:  # storage or database down: next time
                log.warning("custom-size variants not pruned now: %s", exc)
            # Hourly, or twice per keep period when that is shorter (at least a second apart).
            keep = self.settings.variant_custom_keep_days * 86400
            await asyncio.sleep(min(PRUNE_EVERY_SECONDS, max(1.0, keep / 2)))

    async def prune_unused(self) -> int:
        """Remove the custom sizes nobody asked for in ``variant_custom_keep_days``: the records
        first (only those still unused, under their image's lock, so a maker of the same image
        waits), then their objects; a crash in between leaves orphans, which reconciliation
        removes, never a record without bytes."""
        before = utcnow() - timedelta(days=self.settings.variant_custom_keep_days)
        removed = 0
        while True:
            async with self._sessions() as session:
                batch = await records.unused_custom(session, before, PRUNE_BATCH)
            if not batch:
                return removed
            by_image: dict[str, list[str]] = {}
            for v in batch:
                by_image.setdefault(v.image_name, []).append(v.name)
            for image_name, names in by_image.items():
                async with self._sessions() as session:
                    await records.lock_image(session, image_name)
                    gone = await records.forget_unused(session, names, before)
                    await session.commit()
                await self.remove_unrecorded(image_name, gone)
                removed += len(gone)
            if len(batch) < PRUNE_BATCH:
                return removed

    async def remove_unrecorded(self, image_name: str, objects: Sequence[tuple[str, bool]]) -> None:
        """Remove the objects of variant records just deleted: under the image's lock again, and
        only those still without a record (the same custom size asked for again meanwhile is
        recorded under the same name, and its bytes are the new ones)."""
        if not objects:
            return
        async with self._sessions() as session:
            await records.lock_image(session, image_name)  # gone: nothing records it again
            again = await records.recorded(session, [name for name, _ in objects])
            await self._storage.delete_many([o for o in objects if o[0] not in again])
            await session.commit()

    async def idle(self) -> None:
        """Wait until every queued job is done (tests, and a clean stop)."""
        await self._queue.join()

    async def close(self) -> None:
        # First: the jobs cancelled below end their workers, which must not be stopped.
        self._uploads_first.close()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        for task in self._makers:
            task.cancel()
        await asyncio.gather(*self._makers, return_exceptions=True)
        self._makers = []
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def make_presets(self, image_name: str, trigger: str = "upload") -> int:
        """Every preset of the image in every format it lacks; returns how many were made
        (0 when the image is gone or complete). Idempotent."""
        async with self._sessions() as session:
            image = await session.get(Image, image_name)
            if image is None:
                return 0
            have = await records.made_keys(session, image_name)
        jobs = []
        for preset in self.presets.values():
            formats = tuple(
                f
                for f in variant_formats(image.name.rsplit(".", 1)[1])
                if (preset.name, f) not in have
            )
            if formats:
                jobs.append(VariantJob(preset.name, preset.size, formats))
        made = await self._make(image, jobs, custom=False, trigger=trigger)
        return len(made)

    async def make_one(
        self, image: Image, key: str, size: Size, fmt: str, *, custom: bool
    ) -> StoredVariant | None:
        """One variant, made now unless another request of this process is making it (then
        its result); None when the image went away meanwhile. The job is its own task: a
        requester that leaves does not cancel it for the others."""
        name = records.object_name(image.name, key, fmt)
        task = self._inflight.get(name)
        if task is None:
            if len(self._inflight) >= ON_DEMAND_MAX:
                raise Unavailable("too many variants being made; try again shortly", 2)
            job = VariantJob(key, size, (fmt,))
            task = asyncio.create_task(self._make(image, [job], custom=custom, trigger="on_demand"))
            self._inflight[name] = task
            task.add_done_callback(lambda _: self._inflight.pop(name, None))
        made = await asyncio.shield(task)
        return made[0] if made else None

    async def _make(
        self, image: Image, jobs: Sequence[VariantJob], *, custom: bool, trigger: str
    ) -> list[StoredVariant]:
        if not jobs:
            return []
        self._metrics.variant_jobs.labels(trigger).inc()
        started = time.perf_counter()
        pool = self._codecs()
        folder = Path(tempfile.mkdtemp(dir=self._work))
        try:
            try:
                source = await self._original(image, folder)
                pixels = image.width * image.height * max(1, image.frames)
                # Someone waits for an on-demand variant: uploads do not hold it back. Only
                # the presets made after an upload are background work (rebuild: an operator).
                waiting = trigger == "on_demand"
                with self._uploads_first.urgent() if waiting else contextlib.nullcontext():
                    rendered = await pool.render_variants(
                        source, folder, jobs, pixels, background=trigger == "upload"
                    )
            except Exception:
                # The image deleted while we read it: its bytes vanish under the reader (a
                # storage error, or a worker's 422 for a cut-off file). That is "gone", not a
                # failure of the maker.
                if not await self._exists(image.name):
                    return []
                raise
            made = await self._store(image, rendered, custom=custom)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        log.info(
            "made %d variants of %s in %.0f ms",
            len(made),
            image.name,
            (time.perf_counter() - started) * 1000,
        )
        return made

    async def _store(
        self, image: Image, rendered: Sequence[Rendered], *, custom: bool
    ) -> list[StoredVariant]:
        """Store and record what is not recorded yet, holding the image's lock: another
        process making the same variant (the worker after an upload, a replica on demand) may
        have rendered different bytes (another decode scale), and a recorded object is never
        overwritten, so its record always describes its bytes. A deletion waits for the lock,
        or has happened (nothing is stored then). Storing before committing keeps the rule that
        a crash leaves an orphan object (overwritten by the next maker), never a record without
        bytes."""
        async with self._sessions() as session:
            if not await records.lock_image(session, image.name):
                return []  # deleted while we worked
            # Its visibility as of now, under the lock: a change meanwhile moved the others.
            current = await session.get(Image, image.name, populate_existing=True)
            if current is None:
                return []
            rows = {}
            for r in rendered:
                row = self._row(current, r, custom=custom)
                rows[row["name"]] = (r, row)
            found = await records.recorded(session, list(rows))
            new = [row for name, (_, row) in rows.items() if name not in found]
            files = [
                (name, Path(r.path), r.content_type)
                for name, (r, _) in rows.items()
                if name not in found
            ]
            try:
                await self._storage.put_many(files, public=current.public)
                await records.insert(session, new)
                evicted: list[tuple[str, bool]] = []
                if custom and new:
                    evicted = await records.evict_custom(session, image.name, CUSTOM_PER_IMAGE)
                await session.commit()
            except BaseException:
                # Not recorded: remove what was stored now, rather than leave objects the
                # gateway would serve (a public variant) that no visibility change would move.
                # (Any of them may be stored; none is recorded, so none is another maker's.)
                stored = [(name, current.public) for name, _, _ in files]
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._storage.delete_many(stored))
                raise
        # After the commit: a crash leaves orphans, never records without bytes.
        await self.remove_unrecorded(image.name, evicted)
        self._metrics.variants_made.inc(len(new))
        return [found.get(name) or _stored(row) for name, (_, row) in rows.items()]

    async def _exists(self, image_name: str) -> bool:
        async with self._sessions() as session:
            return await session.get(Image, image_name) is not None

    async def _original(self, image: Image, folder: Path) -> Path:
        """A local file with the original's bytes: the stored file itself, or a copy."""
        local = self._storage.local_path(image.name)
        if local is not None:
            return local
        copy = folder / f"original.{image.name.rsplit('.', 1)[1]}"
        with copy.open("wb") as out:
            async for chunk in self._storage.stream(image.name, public=image.public):
                out.write(chunk)
        return copy

    @staticmethod
    def _row(image: Image, r: Rendered, *, custom: bool) -> records.Row:
        now = utcnow()
        return {
            "name": records.object_name(image.name, r.key, r.fmt),
            "image_name": image.name,
            "owner_id": image.owner_id,
            "key": r.key,
            "format": r.fmt,
            "content_type": r.content_type,
            "width": r.width,
            "height": r.height,
            "bytes": r.bytes,
            "sha256": r.sha256,
            "public": image.public,
            "custom": custom,
            "created_at": now,
            "used_at": now,
        }


def _remove_stale(folder: Path) -> None:
    cutoff = time.time() - STALE_TMP_SECONDS
    for entry in folder.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _stored(row: records.Row) -> StoredVariant:
    return StoredVariant(
        name=row["name"],
        image_name=row["image_name"],
        owner_id=row["owner_id"],
        content_type=row["content_type"],
        bytes=row["bytes"],
        sha256=row["sha256"],
        public=row["public"],
        custom=row["custom"],
        used_at=row["used_at"],
    )
