"""Variants of a stored original (thumbnails, AVIF/WebP versions), made in a codec worker.

The original is decoded once per call (a JPEG at the smallest DCT scale every job still has
enough pixels for; an animation one frame at a time) and every job and format is made from that
decode: resized (Lanczos), its colours converted to sRGB, and encoded. The files are written
only once every one of them is encoded, under names that start with the call's token, and
removed again if any write fails: a call leaves all its files or none.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import secrets
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, ImageCms, ImageSequence, UnidentifiedImageError
from PIL import _imaging as pillow_core  # PIL.Image.core: the block allocator's cache

from imagegate.uploader import process
from imagegate.uploader.formats import (
    ALLOWED_NAMES,
    AVIF,
    BY_EXT,
    JPEG,
    PNG,
    WEBP,
    Format,
    sniff,
)
from imagegate.uploader.inspect import ImageRejected
from imagegate.uploader.jobs import Quality, Rendered, VariantJob
from imagegate.uploader.strip import valid_icc
from imagegate.variants.presets import Size, crop_box, output_size

__all__ = [
    "AVIF_SPEED",
    "AVIF_STILL",
    "ImageRejected",
    "Rendered",
    "VariantJob",
    "render_variants",
    "upright_size",
]

# libaom speed: 7 keeps a 320 px thumbnail at ~40 ms CPU on the reference machine (6 takes
# ~70-100 ms for ~13 % fewer bytes; 8 is ~4x faster again for ~15 % more bytes).
AVIF_SPEED = 7
# libaom options (Pillow's ``advanced``) for a still picture. The temporal model (TPL) looks
# across frames: a still has one, and libaom's all-intra mode makes the very same bytes
# without it, but allocates its buffers anyway (~5 MiB for a 2048x1536 variant).
AVIF_STILL = (("enable-tpl-model", "0"),)
# A JPEG is decoded at a DCT scale (M/8) that keeps DCT_GAP decoded pixels per output pixel (a
# side) for every job, but no more than half the full size unless a job needs more: 1/8 alone
# is a plain 8x8 average, which Lanczos cannot undo; past 1/2 the gap costs memory instead.
DCT_GAP = 2.0
# Pillow's two-step resize: an integer box reduction down to this many times the output,
# then Lanczos; 2.0 is indistinguishable from Lanczos alone and several times faster.
RESIZE_GAP = 2.0
# Perceptual: for the matrix/TRC profiles cameras and phones embed (Display P3, Adobe RGB)
# LittleCMS makes it the same as relative colorimetric; for table-based (CMYK, print)
# profiles it is the gamut mapping their authors made for photographs.
INTENT = ImageCms.Intent.PERCEPTUAL
WHITE = (255, 255, 255)

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)
_NO_MEMORY = "image needs more memory than allowed"
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass
class _Made:
    job: VariantJob
    frames: list[Image.Image] = field(default_factory=list)


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The size a picture stored as ``width`` x ``height`` shows at once its EXIF orientation
    is applied."""
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def render_variants(
    src: str,
    out_dir: str,
    jobs: Sequence[VariantJob],
    quality: Quality,
    budget_seconds: float,
    token: str | None = None,
) -> list[Rendered]:
    """Make every job in every one of its formats from the original at ``src``, writing them
    into ``out_dir`` as ``{token}.{key}.{ext}``; the results are in job, then format order.

    ``budget_seconds`` of CPU time (0: none) bound the decoding and encoding; ``token`` (random
    if not given) lets a caller find the files of a call it gave up on. Raises ImageRejected
    (nothing written) when the original cannot be read or the work does not fit the budget."""
    token = token or secrets.token_hex(8)
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"token {token!r} must be 1-64 letters, digits, - or _")
    if not jobs:
        return []
    if len({job.key for job in jobs}) != len(jobs):
        raise ValueError("variant keys must differ (they name the files)")
    try:
        try:
            with process._Timer(budget_seconds):
                encoded = _render(Path(src), jobs, quality)
        except process._OverBudget:
            raise ImageRejected(
                422, f"image variants took longer than {budget_seconds:.3g} s to make"
            ) from None
        except MemoryError:
            raise ImageRejected(422, _NO_MEMORY) from None
        return _write(Path(out_dir), token, encoded)
    finally:
        _give_back_memory()
        process._after_job()


def _write(
    out_dir: Path, token: str, encoded: list[tuple[VariantJob, str, bytes, tuple[int, int]]]
) -> list[Rendered]:
    written: list[Path] = []
    results = []
    try:
        for job, ext, data, (width, height) in encoded:
            path = out_dir / f"{token}.{job.key}.{ext}"
            # O_EXCL: a name already taken is never ours to overwrite (or to remove).
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            written.append(path)
            with open(fd, "wb") as f:
                f.write(data)
            fmt = BY_EXT[ext]
            results.append(
                Rendered(
                    key=job.key,
                    fmt=ext,
                    path=str(path),
                    width=width,
                    height=height,
                    bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    content_type=fmt.content_type,
                )
            )
    except BaseException as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ImageRejected(507, "no storage space left for image variants") from None
        raise
    return results


def _render(src: Path, jobs: Sequence[VariantJob], quality: Quality) -> list[_Encoded]:
    data = src.read_bytes()
    fmt = sniff(data[:64])
    if fmt is None:
        raise ImageRejected(415, f"file is not an image of an accepted type ({ALLOWED_NAMES})")
    with _decoding(fmt):
        img = Image.open(io.BytesIO(data), formats=[fmt.pillow])
        source = _Source.of(img, jobs)
        if source.frames > 1:
            made, durations = _animation(img, source, fmt)
        else:
            # The one reference to the decoded picture, so the last job can let it go.
            holder = [_decode_still(img, data, fmt, source)]
    del img, data  # the file's bytes and Pillow's view of them are not needed any more
    if source.frames > 1:
        return [
            _encoded(m.job, ext, m.frames, durations, source.loop, quality)
            for m in made
            for ext in m.job.formats
        ]
    return _stills(holder, source, quality)


_Encoded = tuple[VariantJob, str, bytes, tuple[int, int]]


@contextmanager
def _decoding(fmt: Format) -> Iterator[None]:
    """Pillow's errors on a damaged file, as the pipeline words them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plugin warnings are not errors (see process.py)
            yield
    except Image.DecompressionBombError as exc:
        raise ImageRejected(422, f"image is larger than {Image.MAX_IMAGE_PIXELS} pixels") from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        if "memory" in str(exc).lower():
            raise ImageRejected(422, _NO_MEMORY) from exc
        raise ImageRejected(422, f"{fmt.pillow} image is corrupt or truncated") from exc


@dataclass(frozen=True)
class _Source:
    """What every job needs to know about the original, read from its header."""

    orientation: int
    upright: tuple[int, int]  # its size once upright
    frames: int
    loop: int | None
    transform: Any  # to sRGB, by mode; None: the pixels are sRGB already
    plans: tuple[tuple[VariantJob, tuple[int, int]], ...]  # each job and its output size

    @classmethod
    def of(cls, img: Image.Image, jobs: Sequence[VariantJob]) -> _Source:
        orientation = img.getexif().get(_ORIENTATION, 1)
        if orientation not in range(1, 9):
            orientation = 1
        upright = upright_size(img.width, img.height, orientation)
        loop = img.info.get("loop")
        return cls(
            orientation=orientation,
            upright=upright,
            frames=int(getattr(img, "n_frames", 1)),
            loop=loop if isinstance(loop, int) else None,
            transform=_srgb_transform(img),
            plans=tuple((job, output_size(*upright, job.size)) for job in jobs),
        )


def _encoded(
    job: VariantJob,
    ext: str,
    frames: list[Image.Image],
    durations: list[int],
    loop: int | None,
    quality: Quality,
) -> _Encoded:
    try:
        out = _encode(frames, BY_EXT[ext], durations, loop, quality)
    except (RuntimeError, *_DECODE_ERRORS) as exc:
        # The AVIF and WebP encoders report a failed allocation only as "encoding failed";
        # under the worker's memory ceiling that is what it is.
        if process._memory_limited or "memory" in str(exc).lower():
            raise ImageRejected(422, _NO_MEMORY) from exc
        raise ImageRejected(
            422, f"image variant {job.key}.{ext} could not be made ({exc})"
        ) from exc
    return job, ext, out, frames[0].size


def _stills(holder: list[Image.Image], source: _Source, quality: Quality) -> list[_Encoded]:
    """Each job in turn, smallest first: resized, encoded in its formats, its bitmap freed.
    The largest comes last, and the decoded picture is freed half-way through its resize.
    Freed memory goes back to the kernel before each job's encoders (see _give_back_memory)."""
    order = sorted(
        range(len(source.plans)), key=lambda i: source.plans[i][1][0] * source.plans[i][1][1]
    )
    done: dict[int, list[_Encoded]] = {}
    for n, i in enumerate(order):
        job, out = source.plans[i]
        last = n == len(order) - 1
        if last:  # the smaller jobs' leftovers go before the largest resize
            _give_back_memory()
        picture = _variant(holder, source, job.size, out, release=last)
        # The resize's intermediate bitmaps (and with the last job, the decode) go before the
        # encoders run: the job's peak is an encoder's working memory on top of what is left.
        _give_back_memory()
        done[i] = [_encoded(job, ext, [picture], [], None, quality) for ext in job.formats]
        del picture
    return [e for i in range(len(source.plans)) for e in done[i]]


def _give_back_memory() -> None:
    """Freed memory back to the kernel: Pillow's cached blocks (kept for the next bitmap, but
    resident) and malloc's free heap. Done before each job's encoders (the largest one's AVIF
    is the call's peak: libaom alone takes ~45 MiB for 2048x1536) and after the call, so an
    idle variant worker holds none of it. Its next bitmaps fault their pages in afresh: a few
    ms of a call's seconds of encoding."""
    pillow_core.clear_cache()
    if process._libc is not None:  # a real worker (see process.init_worker)
        process._libc.malloc_trim(0)


def _animation(img: Image.Image, source: _Source, fmt: Format) -> tuple[list[_Made], list[int]]:
    """Every job's frames, resized and in sRGB, from one pass over the frames; the durations.
    Frames are decoded one at a time: the work and memory are those of the frames' pixels
    once (bounded by the upload limits) and of the (smaller) variants' frames."""
    made = [_Made(job) for job, _ in source.plans]
    durations: list[int] = []
    for frame in _frames(img, source.frames, fmt):
        durations.append(_duration(frame))
        holder = [_normalized(_upright(frame, source.orientation), source.transform, animated=True)]
        for m, (job, out) in zip(made, source.plans, strict=True):
            m.frames.append(_variant(holder, source, job.size, out, release=False))
    for m in made:  # a picture that is opaque in every frame needs no alpha channel
        if all(f.mode == "RGBA" and f.getchannel("A").getextrema()[0] == 255 for f in m.frames):
            m.frames[:] = [f.convert("RGB") for f in m.frames]
    return made, durations


def _frames(img: Image.Image, count: int, fmt: Format) -> Iterator[Image.Image]:
    seen = 0
    for frame in ImageSequence.Iterator(img):
        frame.load()
        seen += 1
        yield frame
    if seen != count:
        raise ImageRejected(422, f"{fmt.pillow} image declares {count} frames but has {seen}")


def _duration(frame: Image.Image) -> int:
    value = frame.info.get("duration", 100)
    return max(0, round(value)) if isinstance(value, int | float) else 100


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """The stored originals are upright already; this is a guard for any that are not."""
    if orientation == 1:
        return img
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }[orientation]
    return img.transpose(method)


def _dct_size(
    upright: tuple[int, int],
    orientation: int,
    plans: tuple[tuple[VariantJob, tuple[int, int]], ...],
) -> tuple[int, int]:
    """The smallest decoded size (stored orientation) the jobs need (see DCT_GAP); the decoder
    picks the smallest DCT scale that reaches it."""
    need = 0.0
    for job, (out_w, out_h) in plans:
        left, top, right, bottom = crop_box(*upright, job.size)
        need = max(need, out_w / (right - left), out_h / (bottom - top))
    need = min(1.0, max(need, min(need * DCT_GAP, 0.5)))
    want = (min(upright[0], ceil(upright[0] * need)), min(upright[1], ceil(upright[1] * need)))
    return upright_size(*want, orientation)


def _decode_still(img: Image.Image, data: bytes, fmt: Format, source: _Source) -> Image.Image:
    """The picture, upright, decoded at the smallest size the jobs allow (JPEG only)."""
    if fmt is JPEG:
        want = _dct_size(source.upright, source.orientation, source.plans)
        if img.mode in ("L", "RGB"):
            img = _decode_jpeg(img, data, want)
        else:  # CMYK: Pillow's decoder (it knows Adobe's inverted CMYK); draft halves only
            img.draft(img.mode, want)
            img.load()
    else:
        img.load()
    return _normalized(_upright(img, source.orientation), source.transform, animated=False)


def _decode_jpeg(img: Image.Image, data: bytes, want: tuple[int, int]) -> Image.Image:
    """libjpeg-turbo's DCT scaling: the smallest of 1/8, 2/8 ... 8/8 that gives at least
    ``want``. Pillow's draft() offers only 1/2, 1/4 and 1/8, so a 2048 px variant of a 12 MP
    photo would need the full decode; at 5/8 it takes 40 % of that memory."""
    colorspace = "GRAY" if img.mode == "L" else "RGBX"
    pixels = simplejpeg.decode_jpeg(
        data, colorspace=colorspace, min_width=want[0], min_height=want[1], strict=False
    )
    height, width = pixels.shape[:2]
    # An RGBX (or L) image is a view of the decoded buffer, not a copy: Pillow maps those modes
    # only. It stays RGBX until each variant is resized (see _variant): made RGB here, it would
    # be copied whole, with the decode alive (twice the decoded bitmap at once).
    mode = "RGBX" if colorspace == "RGBX" else "L"
    return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)


def _normalized(img: Image.Image, transform: Any, *, animated: bool) -> Image.Image:
    """The picture in a mode Lanczos and the encoders take: L, LA, RGB, RGBA (or CMYK when a
    profile converts it; RGBX, a JPEG decode, until resized); animation frames always RGBA, so
    all frames share one mode."""
    mode = img.mode
    alpha = img.has_transparency_data
    if animated:
        return img if mode == "RGBA" else img.convert("RGBA")
    if mode == "RGBX":  # a JPEG decode (see _decode_jpeg)
        return img
    if mode in ("L", "LA", "RGB", "RGBA") and not (alpha and mode in ("L", "RGB")):
        return img
    if mode == "CMYK" and transform is not None:
        return img
    if mode == "L":  # with a transparent grey (tRNS)
        return img.convert("LA")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return _to_8bit(img)
    return img.convert("RGBA" if alpha else "RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grey (PNG) to 8-bit: Pillow's own conversion clips at 255 instead of scaling."""
    values = np.asarray(img)
    if img.mode == "F":
        grey = np.clip(values, 0, 255)
    else:
        grey = np.clip(values.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(grey.astype(np.uint8), "L")


def _variant(
    holder: list[Image.Image], source: _Source, size: Size, out: tuple[int, int], *, release: bool
) -> Image.Image:
    """One job's picture: the region its fit shows, Lanczos-resized to ``out``, in sRGB.
    With ``release``, the picture in ``holder`` is taken out of it and freed as soon as it is
    no longer needed (the caller holds no other reference)."""
    picture = holder[0]
    left, top, right, bottom = crop_box(*source.upright, size)
    # The picture may be a DCT-scaled decode: the same region, in its own pixels.
    sx, sy = picture.width / source.upright[0], picture.height / source.upright[1]
    box = (left * sx, top * sy, right * sx, bottom * sy)
    whole = (0.0, 0.0, float(picture.width), float(picture.height))
    if release:
        holder.clear()
    if out == picture.size and box == whole:
        # RGBX is copied below anyway (to RGB), so it needs no copy of its own here.
        resized = picture if release or picture.mode == "RGBX" else picture.copy()
        del picture
    elif release and picture.mode in ("L", "RGB", "RGBX", "CMYK") and not _reduces(box, out):
        # Pillow's own two passes (horizontal, then vertical), as two calls, so the source is
        # freed before the second: the largest variant never holds three bitmaps at once.
        wide = picture.resize(
            (out[0], picture.height),
            Image.Resampling.LANCZOS,
            box=(box[0], 0.0, box[2], float(picture.height)),
        )
        del picture
        resized = wide.resize(
            out, Image.Resampling.LANCZOS, box=(0.0, box[1], float(out[0]), box[3])
        )
        del wide
    else:
        resized = picture.resize(out, Image.Resampling.LANCZOS, box=box, reducing_gap=RESIZE_GAP)
        del picture
    if resized.mode == "RGBX":  # the decode's layout (its fourth byte is unused): now RGB
        resized = resized.convert("RGB")
    resized = _to_srgb(resized, source.transform)
    # No profile (ImageCms tags what it converts), EXIF or XMP reaches a variant: the PNG and
    # AVIF encoders write whatever the image's info holds.
    resized.info = {}
    return resized


def _reduces(box: tuple[float, float, float, float], out: tuple[int, int]) -> bool:
    """Whether Pillow's resize would box-reduce first (reducing_gap): then it is one call."""
    factor = min((box[2] - box[0]) / out[0], (box[3] - box[1]) / out[1])
    return factor >= 2 * RESIZE_GAP


def _srgb_transform(img: Image.Image) -> Any:
    """A LittleCMS transform from the image's embedded profile to sRGB, or None when it has
    none, it is sRGB already, or it is unusable (then the pixels are taken as sRGB)."""
    icc = img.info.get("icc_profile")
    if not isinstance(icc, bytes) or not icc or not valid_icc(icc):
        return None
    space = {"RGB": "RGB ", "RGBA": "RGB ", "P": "RGB ", "PA": "RGB ", "CMYK": "CMYK"}
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space != space.get(img.mode, "?"):
            return None  # a grey, Lab or mismatched profile: taken as sRGB
        if (profile.profile.profile_description or "").startswith("sRGB"):
            return None  # the conversion would be (nearly) the identity
        cmyk = img.mode == "CMYK"
        modes = [("CMYK", "RGB")] if cmyk else [("RGB", "RGB"), ("RGBA", "RGBA")]
        return {
            src: ImageCms.buildTransform(profile, _SRGB, src, dst, INTENT) for src, dst in modes
        }
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return None


def _to_srgb(img: Image.Image, transform: Any) -> Image.Image:
    if transform is None:
        return img.convert("RGB") if img.mode == "CMYK" else img
    cms = transform.get(img.mode)
    if cms is None:
        return img
    if img.mode == "CMYK":
        converted = ImageCms.applyTransform(img, cms)
        assert converted is not None
        return converted
    ImageCms.applyTransform(img, cms, inPlace=True)
    return img


# --- encoding --------------------------------------------------------------------------------


def _flattened(img: Image.Image) -> Image.Image:
    """A picture without alpha, composited on white (for JPEG)."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode == "LA":
        background = Image.new("L", img.size, 255)
        background.paste(img.getchannel("L"), mask=img.getchannel("A"))
        return background
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    background = Image.new("RGB", img.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _colour(img: Image.Image) -> Image.Image:
    """RGB or RGBA, what the WebP and AVIF encoders take."""
    if img.mode in ("RGB", "RGBA"):
        return img
    return img.convert("RGBA" if "A" in img.mode else "RGB")


def _encode(
    frames: list[Image.Image],
    fmt: Format,
    durations: list[int],
    loop: int | None,
    quality: Quality,
) -> bytes:
    animated = len(frames) > 1 and fmt is not JPEG
    options: dict[str, Any]
    if fmt is JPEG:
        frames = [_flattened(frames[0])]
        options = {"quality": quality.jpeg, "progressive": True, "optimize": True}
    elif fmt is WEBP:
        frames = [_colour(f) for f in frames]
        options = {"quality": quality.webp, "method": 4}
        if animated:
            # WebP's loop 0 is "forever"; a GIF without a loop count plays once.
            options["loop"] = 1 if loop is None else loop
    elif fmt is AVIF:
        # One libaom thread: the pool already runs one job per core.
        frames = [_colour(f) for f in frames]
        options = {"quality": quality.avif, "speed": AVIF_SPEED, "max_threads": 1}
        if not animated:
            options["advanced"] = AVIF_STILL
    elif fmt is PNG:
        options = {"compress_level": 6}
        if animated:
            options["loop"] = 0 if loop is None else loop
    else:  # GIF
        options = {}
        if animated and loop is not None:
            options["loop"] = loop
        if frames[0].mode in ("RGBA", "LA"):
            # Frames are whole pictures: each one replaces the last, transparent parts too.
            options["disposal"] = 2
    if animated:
        options.update(save_all=True, append_images=frames[1:], duration=durations)
    out = io.BytesIO()
    frames[0].save(out, format=fmt.pillow, **options)
    return out.getvalue()
