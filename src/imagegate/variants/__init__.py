"""Variants of stored images: thumbnails and AVIF/WebP versions made in the codec workers."""

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
from imagegate.variants.render import Rendered, VariantJob, render_variants

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
