"""What the server hands its codec workers and gets back, without the image code itself.

The server process never decodes an image, so it need not import Pillow, simplejpeg or numpy
(a fifth of ``imagegate serve``'s start under load): the jobs' arguments and results are
defined here, and the functions the workers run are small entry points that import the image
code where they run (the workers' forkserver has it loaded already: uploader/workerboot.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagegate.uploader.formats import BY_EXT
from imagegate.uploader.inspect import Limits

if TYPE_CHECKING:  # (presets: not at run time, the variants package imports this module)
    from collections.abc import Sequence

    from imagegate.variants.presets import Size

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Budget:
    """CPU time an image may take: proportional to its pixels (all frames), within bounds."""

    seconds_per_megapixel: float
    min_seconds: float
    max_seconds: float

    def seconds(self, pixels: int) -> float:
        return min(
            self.max_seconds, max(self.min_seconds, self.seconds_per_megapixel * pixels / 1e6)
        )


@dataclass(frozen=True)
class Quality:
    jpeg: int
    webp: int
    avif: int


@dataclass(frozen=True)
class Processed:
    ext: str
    content_type: str
    width: int
    height: int
    frames: int
    bytes: int
    uploaded_bytes: int
    sha256: str
    reencoded: bool


@dataclass(frozen=True)
class VariantJob:
    """One variant to make: ``key`` names its files (a preset name, or any key the caller
    picks), ``size`` its box, ``formats`` the extensions to encode it in."""

    key: str
    size: Size
    formats: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _KEY_RE.fullmatch(self.key):
            raise ValueError(f"variant key {self.key!r} must be 1-64 letters, digits, - or _")
        if not self.formats or len(set(self.formats)) != len(self.formats):
            raise ValueError(f"variant {self.key!r}: formats must be given once each")
        for ext in self.formats:
            if ext not in BY_EXT:
                raise ValueError(f"variant {self.key!r}: unknown format {ext!r}")


@dataclass(frozen=True)
class Rendered:
    key: str
    fmt: str  # the extension: jpg, png, gif, webp, avif
    path: str
    width: int
    height: int
    bytes: int
    sha256: str
    content_type: str


# --- the workers' entry points: each runs its namesake of process.py or variants/render.py --


def init_worker(
    limits: Limits, cache_mib: int, memory_mib: int = 0, recycle_mib: int = 0, nice: int = 0
) -> None:
    """process.init_worker, once per worker process; the worker dies with its parent."""
    from imagegate.uploader import process

    process.die_with_parent()
    process.init_worker(limits, cache_mib, memory_mib, recycle_mib, nice)


def warm_up() -> int:
    """A no-op task that makes the pool start a worker; its pid."""
    from imagegate.uploader import process

    return process.warm_up()


def process_image(
    src: str, dst: str, limits: Limits, quality: Quality, budget: Budget | None = None
) -> Processed:
    """process.process_image: the upload at ``src`` made into the file to store at ``dst``."""
    from imagegate.uploader import process

    return process.process_image(src, dst, limits, quality, budget)


def render_variants(
    src: str,
    out_dir: str,
    jobs: Sequence[VariantJob],
    quality: Quality,
    budget_seconds: float,
    token: str | None = None,
) -> list[Rendered]:
    """variants/render.render_variants: the variants of a stored original."""
    from imagegate.variants import render

    return render.render_variants(src, out_dir, jobs, quality, budget_seconds, token)


__all__ = [
    "Budget",
    "Processed",
    "Quality",
    "Rendered",
    "VariantJob",
    "init_worker",
    "process_image",
    "render_variants",
    "warm_up",
]
