"""What variants exist: named boxes (presets), the size each one gives an original, and the
formats made for each original format. Pure functions, no Pillow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

__all__ = [
    "DEFAULT_PRESETS",
    "MAX_SIDE",
    "VARIANT_FORMATS",
    "Fit",
    "Preset",
    "Size",
    "crop_box",
    "format_presets",
    "output_size",
    "parse_presets",
    "variant_formats",
]

MAX_SIDE = 4096
Fit = Literal["cover", "contain"]
FITS: tuple[Fit, ...] = ("cover", "contain")
_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
_ITEM_RE = re.compile(r"([^=]*)=(\d+)x(\d+)(?::([a-z]*))?")


@dataclass(frozen=True)
class Size:
    """A box: ``cover`` fills it exactly (centre crop), ``contain`` fits inside it."""

    width: int
    height: int
    fit: Fit

    def __post_init__(self) -> None:
        for side in (self.width, self.height):
            if not isinstance(side, int) or not 1 <= side <= MAX_SIDE:
                raise ValueError(f"a side must be a whole number from 1 to {MAX_SIDE}: {side!r}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be cover or contain, not {self.fit!r}")

    def __str__(self) -> str:
        return f"{self.width}x{self.height}:{self.fit}"


@dataclass(frozen=True)
class Preset:
    name: str
    size: Size

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(
                f"preset name {self.name!r} must be a lower-case letter then up to 15 lower-case "
                "letters or digits"
            )


DEFAULT_PRESETS: tuple[Preset, ...] = (
    Preset("thumb", Size(320, 320, "cover")),
    Preset("small", Size(640, 640, "contain")),
    Preset("medium", Size(1280, 1280, "contain")),
    Preset("large", Size(2048, 2048, "contain")),
)


def parse_presets(text: str) -> tuple[Preset, ...]:
    """Presets from a setting such as ``thumb=320x320:cover,small=640x640:contain``.

    The fit defaults to ``contain``. Raises ValueError naming the item that is wrong."""
    presets: list[Preset] = []
    seen: set[str] = set()
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError("no presets given (expected name=WIDTHxHEIGHT:cover|contain, ...)")
    for item in items:
        if not item:
            raise ValueError(f"empty preset in {text!r} (a stray comma?)")
        match = _ITEM_RE.fullmatch(item)
        if match is None:
            raise ValueError(
                f"preset {item!r} is not name=WIDTHxHEIGHT or name=WIDTHxHEIGHT:cover|contain"
            )
        name, width, height, fit = match.groups()
        name = name.strip()
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"preset name {name!r} must be a lower-case letter then up to 15 lower-case "
                "letters or digits"
            )
        if name in seen:
            raise ValueError(f"preset {name!r} is given twice")
        fit = fit or "contain"
        if fit not in FITS:
            raise ValueError(f"preset {name!r}: fit must be cover or contain, not {fit!r}")
        for side in (int(width), int(height)):
            if not 1 <= side <= MAX_SIDE:
                raise ValueError(f"preset {name!r}: sides must be 1 to {MAX_SIDE} pixels")
        seen.add(name)
        presets.append(Preset(name, Size(int(width), int(height), cast(Fit, fit))))
    return tuple(presets)


def format_presets(presets: tuple[Preset, ...]) -> str:
    """The setting string ``parse_presets`` reads back as ``presets``."""
    return ",".join(f"{p.name}={p.size}" for p in presets)


def _cover_crop(src_w: int, src_h: int, size: Size) -> tuple[float, float]:
    """The largest region of the box's aspect ratio that fits the original (exact)."""
    if src_w * size.height > src_h * size.width:  # the original is wider than the box
        return src_h * size.width / size.height, float(src_h)
    return float(src_w), src_w * size.height / size.width


def output_size(src_w: int, src_h: int, size: Size) -> tuple[int, int]:
    """The variant's pixel size for an original of ``src_w`` x ``src_h``. Never upscaled:

    - contain: the original scaled to fit inside the box, keeping its aspect ratio, at most
      the original's size;
    - cover: the box, or, when the original is smaller than the box, the largest crop of the
      box's aspect ratio that fits the original."""
    if src_w < 1 or src_h < 1:
        raise ValueError(f"an image has at least one pixel a side, not {src_w}x{src_h}")
    if size.fit == "contain":
        scale = min(1.0, size.width / src_w, size.height / src_h)
        if scale >= 1.0:
            return src_w, src_h
        # The side that bounds the box is exactly the box's, the other is rounded.
        if size.width / src_w <= size.height / src_h:
            return size.width, max(1, min(size.height, round(src_h * scale)))
        return max(1, min(size.width, round(src_w * scale))), size.height
    crop_w, crop_h = _cover_crop(src_w, src_h, size)
    if crop_w >= size.width and crop_h >= size.height:
        return size.width, size.height
    return max(1, min(src_w, round(crop_w))), max(1, min(src_h, round(crop_h)))


def crop_box(src_w: int, src_h: int, size: Size) -> tuple[float, float, float, float]:
    """The region of the original a variant shows (left, top, right, bottom; fractional):
    the whole picture for contain, the centred crop for cover."""
    if size.fit == "contain":
        return 0.0, 0.0, float(src_w), float(src_h)
    crop_w, crop_h = _cover_crop(src_w, src_h, size)
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def variant_formats(original_ext: str) -> tuple[str, ...]:
    """The formats (extensions) made for an original: AVIF, WebP and the original's own."""
    return tuple(dict.fromkeys(("avif", "webp", original_ext)))


# By the original's extension (uploader/formats.py BY_EXT).
VARIANT_FORMATS: dict[str, tuple[str, ...]] = {
    ext: variant_formats(ext) for ext in ("jpg", "png", "gif", "webp", "avif")
}
