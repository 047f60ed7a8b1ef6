"""Variants of stored images: thumbnails and AVIF/WebP versions made in the codec workers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagegate.uploader.jobs import Rendered, VariantJob
from imagegate.variants.presets import (
    DEFAULT_PRESETS,
    MAX_SIDE,
    VARIANT_FORMATS,
    Preset,
    Size,
    output_size,
    parse_presets,
    variant_formats,
)

if TYPE_CHECKING:
    from imagegate.variants.render import render_variants


def __getattr__(name: str) -> Any:
    # render.py is the image code (Pillow, numpy): loaded when asked for, so that the server,
    # which imports this package but never renders (its workers do), does not load it.
    if name == "render_variants":
        from imagegate.variants.render import render_variants

        return render_variants
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PRESETS",
    "MAX_SIDE",
    "VARIANT_FORMATS",
    "Preset",
    "Rendered",
    "Size",
    "VariantJob",
    "output_size",
    "parse_presets",
    "render_variants",
    "variant_formats",
]
