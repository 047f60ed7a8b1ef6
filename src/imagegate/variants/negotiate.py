"""Which format a client gets: AVIF if its ``Accept`` names it, else WebP if it names that,
else the original's format (``*/*`` alone, ``image/*`` or no ``Accept``)."""

from __future__ import annotations

PREFERRED = (("image/avif", "avif"), ("image/webp", "webp"))


def _named(accept: str) -> set[str]:
    """The media types ``accept`` names with a quality above zero."""
    named = set()
    for part in accept.lower().split(",")[:64]:  # a hostile header costs at most 64 items
        media, _, params = part.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            named.add(media.strip())
    return named


def choose_format(accept: str | None, original_ext: str) -> str:
    """The extension of the variant to send for this ``Accept`` header."""
    if accept:
        named = _named(accept)
        for media, ext in PREFERRED:
            if media in named:
                return ext
    return original_ext
