"""``imagegate variants rebuild``: make the variants existing images lack, or whose preset
changed size since they were made, and remove those of presets no longer configured.
Resumable (what is done is skipped) and bounded in CPU (``--jobs`` variant workers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.models import Image, Variant
from imagegate.errors import AppError
from imagegate.metrics import Metrics
from imagegate.runtime import build_storage, lock_data_dir
from imagegate.settings import Settings
from imagegate.storage.local import LocalStorage
from imagegate.variants import records
from imagegate.variants.maker import VariantMaker
from imagegate.variants.presets import Preset, output_size

PAGE = 500


@dataclass
class Outcome:
    images: int = 0
    made: int = 0
    removed: int = 0  # variants of presets no longer configured
    failed: int = 0


async def _names(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[str]:
    after = ""
    while True:
        async with sessions() as session:
            page = list(
                await session.scalars(
                    select(Image.name).where(Image.name > after).order_by(Image.name).limit(PAGE)
                )
            )
        if not page:
            return
        for name in page:
            yield name
        after = page[-1]


async def _forget_outdated(session: AsyncSession, image: Image, presets: list[Preset]) -> None:
    """Drop the records of variants whose preset changed size (their objects are replaced
    when they are made again under the same name)."""
    for preset in presets:
        width, height = output_size(image.width, image.height, preset.size)
        await session.execute(
            delete(Variant).where(
                Variant.image_name == image.name,
                Variant.key == preset.name,
                (Variant.width != width) | (Variant.height != height),
            )
        )


async def rebuild(settings: Settings, preset: str | None, jobs: int) -> Outcome:
    """Make what is missing or outdated, ``jobs`` images at a time, with a progress bar."""
    settings = settings.model_copy(update={"variant_workers": jobs})
    storage = build_storage(settings)
    # A local folder belongs to one process at a time: a server starting meanwhile would take
    # a variant stored but not yet recorded for an orphan and remove it.
    lock = lock_data_dir(settings.data_dir) if isinstance(storage, LocalStorage) else None
    engine = create_engine(settings.effective_database_url, settings.database_pool_size)
    sessions = create_sessionmaker(engine)
    maker = VariantMaker(settings, sessions, storage, Metrics())
    if preset is not None:
        if preset not in maker.presets:
            raise AppError(
                f"no such preset: {preset} (known: {', '.join(maker.presets)})", status=400
            )
        maker.presets = {preset: maker.presets[preset]}
    chosen = list(maker.presets.values())
    outcome = Outcome()
    try:
        async with sessions() as session:
            total = int(await session.scalar(select(func.count()).select_from(Image)) or 0)
        columns = (
            TextColumn("variants"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns) as progress:
            task = progress.add_task("images", total=total)
            limit = asyncio.Semaphore(jobs)

            async def one(name: str) -> None:
                async with limit:
                    try:
                        removed: list[tuple[str, bool]] = []
                        async with sessions() as session:
                            # Under the image's lock, as every writer of its variants.
                            if await records.lock_image(session, name):
                                image = await session.get(Image, name)
                                assert image is not None  # locked: it cannot go meanwhile
                                await _forget_outdated(session, image, chosen)
                                if preset is None:  # every preset in view: drop removed ones
                                    removed = await records.forget_presets_except(
                                        session, name, list(maker.presets)
                                    )
                                await session.commit()
                        # After the commit: a crash leaves orphans, never records without bytes.
                        await maker.remove_unrecorded(name, removed)
                        outcome.removed += len(removed)
                        # Awaited first: "x += await" reads x before the wait (lost updates).
                        made = await maker.make_presets(name, trigger="rebuild")
                        outcome.made += made
                    except AppError as exc:
                        outcome.failed += 1
                        progress.console.print(f"{name}: {exc.message}")
                    outcome.images += 1
                    progress.advance(task)

            pending: set[asyncio.Task[None]] = set()
            async for name in _names(sessions):
                while len(pending) >= 2 * jobs:  # bounded: never the whole table in tasks
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.add(asyncio.create_task(one(name)))
            if pending:
                await asyncio.gather(*pending)
    finally:
        await maker.close()
        await engine.dispose()
        if lock is not None:
            lock.close()
    return outcome
