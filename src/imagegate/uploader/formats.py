"""The allowed image formats and how to recognise them from their first bytes."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    pillow: str  # Pillow's format name
    ext: str
    content_type: str


JPEG = Format("JPEG", "jpg", "image/jpeg")
PNG = Format("PNG", "png", "image/png")
GIF = Format("GIF", "gif", "image/gif")
WEBP = Format("WEBP", "webp", "image/webp")
AVIF = Format("AVIF", "avif", "image/avif")
ALLOWED = (JPEG, PNG, GIF, WEBP, AVIF)
BY_EXT = {f.ext: f for f in ALLOWED}
ALLOWED_NAMES = "JPEG, PNG, GIF, WebP or AVIF"

# A stored image's name: a lower-case uuid4 and a known extension, nothing else.
IMAGE_NAME_RE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.(?:"
    + "|".join(BY_EXT)
    + ")"
)

_AVIF_BRANDS = (b"avif", b"avis")


def sniff(head: bytes) -> Format | None:
    """The allowed format whose signature starts ``head`` (32+ bytes), else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[4:8] == b"ftyp":
        # ISO-BMFF: the major brand, or one of the compatible brands in the ftyp box.
        size = int.from_bytes(head[:4], "big")
        brands = head[8:12] + head[16 : min(size, len(head))]
        if any(brands[i : i + 4] in _AVIF_BRANDS for i in range(0, len(brands), 4)):
            return AVIF
    return None


def is_image_name(name: str) -> bool:
    return IMAGE_NAME_RE.fullmatch(name) is not None
