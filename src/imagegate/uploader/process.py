"""The CPU-heavy half of an upload, run in a worker process: identify, check, decode, normalize,
re-encode, and keep the smaller of that and the losslessly stripped original.

Nothing here touches the network or the database; input and output are files in the
data dir's tmp folder, so only small results cross the process boundary.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import GifImagePlugin, Image, ImageOps, ImageSequence, UnidentifiedImageError
from PIL import _imaging as pillow_core  # PIL.Image.core: the block allocator's settings

from imagegate.uploader.formats import (
    ALLOWED_NAMES,
    AVIF,
    GIF,
    JPEG,
    PNG,
    WEBP,
    Format,
    sniff,
)
from imagegate.uploader.strip import STRIPPERS

# Keep GIF frames in palette mode where they share a palette, so re-encoding stays faithful.
GifImagePlugin.LOADING_STRATEGY = GifImagePlugin.LoadingStrategy.RGB_AFTER_DIFFERENT_PALETTE_ONLY
_ORIENTATION = 0x0112
# Frame info that affects rendering; everything else (comments, XMP, EXIF…) is dropped.
_RENDER_INFO = ("transparency", "duration", "background", "disposal", "blend")
# Everything Pillow raises on a damaged file, across its plugins.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_side: int
    max_frames: int


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


class ImageRejected(Exception):
    """The upload is not an acceptable image; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def _open(data: bytes, fmt: Format, limits: Limits) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=[fmt.pillow])
    except Image.DecompressionBombError as exc:
        raise ImageRejected(422, f"image is larger than {limits.max_pixels} pixels") from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise ImageRejected(422, f"{fmt.pillow} image is corrupt or truncated") from exc


def _check_dimensions(img: Image.Image, limits: Limits) -> int:
    """Reject oversized images from their headers, before any pixel is decoded."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageRejected(422, "image has no pixels")
    if max(width, height) > limits.max_side:
        raise ImageRejected(
            422, f"image is {width}x{height}; at most {limits.max_side} pixels a side"
        )
    try:
        frames = int(getattr(img, "n_frames", 1))
    except _DECODE_ERRORS as exc:
        raise ImageRejected(422, "image is corrupt or truncated") from exc
    if frames > limits.max_frames:
        raise ImageRejected(422, f"animation has {frames} frames; at most {limits.max_frames}")
    if width * height * frames > limits.max_pixels:
        raise ImageRejected(
            422,
            f"image is {width}x{height}x{frames} frames; at most {limits.max_pixels} pixels in all",
        )
    return frames


def _render_only(frame: Image.Image) -> Image.Image:
    frame.info = {k: v for k, v in frame.info.items() if k in _RENDER_INFO}
    return frame


def _decode(img: Image.Image, frames: int) -> tuple[list[Image.Image], bool]:
    """All frames decoded and upright, and whether rotating them was needed."""
    orientation = img.getexif().get(_ORIENTATION, 1)
    rotate = orientation in range(2, 9)
    exif = img.getexif().tobytes() if rotate else b""
    if frames == 1:
        # No copy: the decoded bitmap is the one kept, so memory stays at one bitmap.
        img.load()
        return [_render_only(ImageOps.exif_transpose(img) if rotate else img)], rotate
    decoded = []
    for frame in ImageSequence.Iterator(img):
        copy = frame.copy()
        if rotate:
            copy.info["exif"] = exif
            copy = ImageOps.exif_transpose(copy)
        decoded.append(_render_only(copy))
    return decoded, rotate


def _encode(
    frames: list[Image.Image], fmt: Format, source_info: dict[str, Any], quality: Quality
) -> bytes:
    presets: dict[Format, dict[str, Any]] = {
        JPEG: {"quality": quality.jpeg, "progressive": True, "optimize": True},
        PNG: {"optimize": True},
        GIF: {"optimize": True},
        WEBP: {"quality": quality.webp, "method": 4},
        AVIF: {"quality": quality.avif},
    }
    options = dict(presets[fmt])
    icc = source_info.get("icc_profile")
    if icc:
        options["icc_profile"] = icc
    if len(frames) > 1:
        options["save_all"] = True
        options["append_images"] = frames[1:]
        options["duration"] = [f.info.get("duration", 100) for f in frames]
        if "loop" in source_info:
            options["loop"] = source_info["loop"]
    out = io.BytesIO()
    frames[0].save(out, format=fmt.pillow, **options)
    return out.getvalue()


def _stripped_original(data: bytes, fmt: Format, source_info: dict[str, Any]) -> bytes | None:
    stripper = STRIPPERS.get(fmt.pillow)
    if stripper is not None:
        return stripper(data)
    # No container walker for this format: the original qualifies only if it carries no metadata.
    has_metadata = any(k in source_info for k in ("exif", "xmp", "comment"))
    return None if has_metadata else data


def process_image(src: str, dst: str, limits: Limits, quality: Quality) -> Processed:
    """Turn the upload at ``src`` into the file to store at ``dst``, or raise ImageRejected."""
    data = Path(src).read_bytes()
    fmt = sniff(data[:64])
    if fmt is None:
        raise ImageRejected(415, f"file is not an image of an accepted type ({ALLOWED_NAMES})")
    img = _open(data, fmt, limits)
    frames = _check_dimensions(img, limits)
    source_info = {str(k): v for k, v in img.info.items()}
    try:
        decoded, rotated = _decode(img, frames)
        reencoded = _encode(decoded, fmt, source_info, quality)
    except _DECODE_ERRORS as exc:
        raise ImageRejected(422, f"{fmt.pillow} image is corrupt or truncated") from exc
    # A stripped original loses the EXIF orientation, so it only qualifies when upright.
    stripped = None if rotated else _stripped_original(data, fmt, source_info)
    chosen = stripped if stripped is not None and len(stripped) <= len(reencoded) else reencoded
    with open(dst, "wb") as f:
        f.write(chosen)
    width, height = decoded[0].size
    return Processed(
        ext=fmt.ext,
        content_type=fmt.content_type,
        width=width,
        height=height,
        frames=frames,
        bytes=len(chosen),
        uploaded_bytes=len(data),
        sha256=hashlib.sha256(chosen).hexdigest(),
        reencoded=chosen is reencoded,
    )


def init_worker(limits: Limits, cache_mib: int) -> None:
    """Once per worker process: plugins registered, Pillow's own decompression-bomb guard set to
    our limit (a second line of defence behind the header check), and its block cache sized."""
    Image.init()
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    # Without a cache every bitmap is fresh memory from the kernel: a 12 MP image costs ~12,000
    # page faults, 9 % of its processing time (docs/performance.md). Freed blocks kept for the
    # next image cost no more at peak, only idle memory after the first upload.
    pillow_core.set_blocks_max(cache_mib * 2**20 // pillow_core.get_block_size())


def warm_up() -> int:
    """A no-op task that makes the pool start a worker."""
    return os.getpid()
