"""``image.stored``: make the image's presets after the upload, not in it."""

from __future__ import annotations

from imagegate.events.envelope import Event
from imagegate.events.handlers import HandlerContext


async def make_variants(event: Event, ctx: HandlerContext) -> None:
    """Queue every preset of the stored image for this process's variant makers (unless the
    operator has them made on first request only)."""
    if ctx.variants is not None and ctx.settings.variants_after_upload:
        await ctx.variants.schedule(str(event.data.get("name", "")))
