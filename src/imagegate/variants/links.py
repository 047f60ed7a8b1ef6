"""The variants' URLs an image record shows: one per preset, and a ready ``srcset``."""

from __future__ import annotations

from collections.abc import Iterable

from imagegate.variants.presets import Preset, output_size


def variant_urls(name: str, public: bool, presets: Iterable[Preset]) -> dict[str, str]:
    """``{preset: url}``: public images' at /images/, private ones' at /v1/user/."""
    prefix = "/images/" if public else "/v1/user/"
    return {p.name: f"{prefix}{p.name}/{name}" for p in presets}


def srcset(name: str, public: bool, width: int, height: int, presets: Iterable[Preset]) -> str:
    """``url 640w, ...`` over the presets that keep the whole picture (``contain``; a cropped
    thumbnail is a different picture), one entry per distinct width, narrowest first."""
    by_width: dict[int, str] = {}
    contain = [p for p in presets if p.size.fit == "contain"]
    urls = variant_urls(name, public, contain)
    for preset in contain:
        w, _ = output_size(width, height, preset.size)
        by_width.setdefault(w, urls[preset.name])
    return ", ".join(f"{url} {w}w" for w, url in sorted(by_width.items()))
