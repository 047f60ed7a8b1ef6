"""The CPU-heavy half of an upload, run in a worker process: identify, check, decode, normalize,
re-encode, and keep the smaller of that and the losslessly stripped original.

Nothing here touches the network or the database; input and output are files in the
data dir's tmp folder, so only small results cross the process boundary.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import os
import resource
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import simplejpeg
from PIL import (
    GifImagePlugin,
    Image,
    ImageOps,
    ImageSequence,
    UnidentifiedImageError,
)
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
from imagegate.uploader.inspect import ImageRejected, Layout, Limits, inspect
from imagegate.uploader.jobs import Budget, Processed, Quality
from imagegate.uploader.strip import STRIPPERS, strip_jpeg, valid_icc

__all__ = ["Budget", "ImageRejected", "Limits", "Processed", "Quality", "process_image"]

# Keep GIF frames in palette mode where they share a palette, so re-encoding stays faithful.
GifImagePlugin.LOADING_STRATEGY = GifImagePlugin.LoadingStrategy.RGB_AFTER_DIFFERENT_PALETTE_ONLY
_ORIENTATION = 0x0112
# Frame info that affects rendering; everything else (comments, XMP, EXIF…) is dropped.
_RENDER_INFO = ("transparency", "duration", "background", "disposal", "blend")
# Everything Pillow raises on a damaged file, across its plugins.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)
_NO_MEMORY = "image needs more memory than allowed"


class _OverBudget(BaseException):
    """Raised by the CPU timer; a BaseException so no ``except Exception`` in a plugin eats it."""


def _open(data: bytes, fmt: Format, limits: Limits) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Plugin warnings (a malformed MPO index, a bomb warning below our own limit) are
            # not errors: what matters is whether the pixels decode.
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data), formats=[fmt.pillow])
    except Image.DecompressionBombError as exc:
        raise ImageRejected(422, f"image is larger than {limits.max_pixels} pixels") from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise ImageRejected(422, f"{fmt.pillow} image is corrupt or truncated") from exc


def _check_dimensions(img: Image.Image, layout: Layout, fmt: Format, limits: Limits) -> int:
    """Pillow's view of the header must be the container's: same canvas, same frame count."""
    try:
        frames = int(getattr(img, "n_frames", 1))
    except _DECODE_ERRORS as exc:
        raise ImageRejected(422, f"{fmt.pillow} image is corrupt or truncated") from exc
    width, height = img.size
    if fmt is AVIF:  # the container's sizes bound what libavif reports
        agrees = width <= layout.width and height <= layout.height
    else:
        agrees = (width, height) == (layout.width, layout.height) and frames == layout.frames
    if not agrees:
        raise ImageRejected(
            422,
            f"{fmt.pillow} image declares {layout.width}x{layout.height}x{layout.frames} frames "
            f"but opens as {width}x{height}x{frames}",
        )
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


def _decoded(frame: Image.Image, size: tuple[int, int], fmt: Format) -> Image.Image:
    """Every frame must decode to the size its header declared (a decoder that grows or
    shrinks the canvas is decoding something the checks did not see)."""
    if frame.size != size:
        raise ImageRejected(
            422,
            f"{fmt.pillow} image declares {size[0]}x{size[1]} but decodes to "
            f"{frame.size[0]}x{frame.size[1]}",
        )
    return frame


# Where the strict decoder writes, kept for the next image while no bigger than Pillow's block
# cache: fresh memory from the kernel costs a 1 MP decode ~30 % more in page faults. Pillow
# copies the pixels into its own bitmap, so the buffer is free again once the image is built.
_decode_buffer = bytearray()


def _decode_jpeg(img: Image.Image, data: bytes) -> Image.Image:
    """The JPEG's pixels, decoded by libjpeg-turbo in strict mode: its warnings are refusals.

    Pillow hides libjpeg's "premature end of data segment" warning and fills the rest of the
    picture in, so a file cut short and given an end marker would decode. Grey and colour
    pictures are decoded once, here (same library, same integer DCT and upsampling: the pixels
    are Pillow's, byte for byte); CMYK ones, which Pillow inverts and tags, are decoded by Pillow
    after this pass, which is then only the check."""
    global _decode_buffer
    # RGBX, not RGB: four bytes a pixel is Pillow's own layout, so the image below is a view of
    # the decoded buffer, not a copy of it (one bitmap in memory, as with Pillow's decoder); the
    # encoders take RGBX as RGB.
    colorspace, channels = {"L": ("GRAY", 1), "RGB": ("RGBX", 4)}.get(img.mode, ("CMYK", 4))
    size = img.width * img.height * channels
    if size <= pillow_core.get_blocks_max() * pillow_core.get_block_size():
        if len(_decode_buffer) < size:
            _decode_buffer = bytearray()  # the old one goes first: one buffer at a time
            _decode_buffer = bytearray(size)
        buffer: bytearray | None = _decode_buffer
    else:
        buffer = None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True, buffer=buffer)
    except ValueError as exc:
        if "memory" in str(exc).lower():  # libjpeg could not allocate its work memory
            raise ImageRejected(422, _NO_MEMORY) from exc
        raise ImageRejected(422, "JPEG image is corrupt or ends early") from exc
    if colorspace == "CMYK":
        del pixels
        img.load()
        return img
    raw_mode = "RGBX" if colorspace == "RGBX" else img.mode
    decoded = Image.frombuffer(img.mode, img.size, pixels, "raw", raw_mode, 0, 1)
    decoded.info = dict(img.info)  # the header Pillow parsed: EXIF orientation, ICC profile
    return decoded


def _decode(
    img: Image.Image, frames: int, fmt: Format, data: bytes
) -> tuple[list[Image.Image], bool]:
    """All frames decoded and upright, and whether rotating them was needed."""
    size = img.size
    orientation = img.getexif().get(_ORIENTATION, 1)
    rotate = orientation in range(2, 9)
    exif = img.getexif().tobytes() if rotate else b""
    if frames == 1:
        # No copy: the decoded bitmap is the one kept.
        if fmt is JPEG:
            img = _decode_jpeg(img, data)
        else:
            img.load()
        _decoded(img, size, fmt)
        return [_render_only(ImageOps.exif_transpose(img) if rotate else img)], rotate
    decoded = []
    for frame in ImageSequence.Iterator(img):
        copy = _decoded(frame.copy(), size, fmt)
        if rotate:
            copy.info["exif"] = exif
            copy = ImageOps.exif_transpose(copy)
        decoded.append(_render_only(copy))
    if len(decoded) != frames:
        raise ImageRejected(
            422, f"{fmt.pillow} image declares {frames} frames but has {len(decoded)}"
        )
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
    # Only a profile that checks out is carried over: it is the one block of the upload's own
    # bytes that the re-encoded file keeps.
    if isinstance(icc, bytes) and valid_icc(icc):
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


def _stripped_original(
    data: bytes, fmt: Format, source_info: dict[str, Any], layout: Layout
) -> bytes | None:
    if fmt is JPEG:
        return strip_jpeg(data, layout.scan_ends)
    stripper = STRIPPERS.get(fmt.pillow)
    if stripper is not None:
        return stripper(data)
    # No container walker for this format (AVIF): the original qualifies only if its sizes
    # agree with its AV1 streams, its top level holds only image boxes, and it carries no
    # metadata.
    has_metadata = any(k in source_info for k in ("exif", "xmp", "comment"))
    return None if has_metadata or not layout.consistent else data


def _over_budget(_signum: int, _frame: FrameType | None) -> None:
    raise _OverBudget


@dataclass
class _Timer:
    """A CPU-time alarm (ITIMER_PROF) that interrupts the work with _OverBudget."""

    seconds: float  # 0: no alarm

    def __enter__(self) -> _Timer:
        if self.seconds:
            signal.signal(signal.SIGPROF, _over_budget)
            signal.setitimer(signal.ITIMER_PROF, self.seconds)
        return self

    def __exit__(self, *_: object) -> None:
        if self.seconds:
            signal.setitimer(signal.ITIMER_PROF, 0)


def process_image(
    src: str, dst: str, limits: Limits, quality: Quality, budget: Budget | None = None
) -> Processed:
    """Turn the upload at ``src`` into the file to store at ``dst``, or raise ImageRejected.

    With a ``budget``, the work after the container walk runs under a CPU-time alarm sized
    from the image's pixels (all frames)."""
    # The container walk runs under the smallest budget (a file of a million tiny chunks is
    # slow to walk too), the rest under the budget its pixels earn.
    seconds = budget.min_seconds if budget is not None else 0.0
    try:
        # Under a tight memory ceiling even the file's bytes may not fit: the same 422.
        data = Path(src).read_bytes()
        fmt = sniff(data[:64])
        if fmt is None:
            raise ImageRejected(415, f"file is not an image of an accepted type ({ALLOWED_NAMES})")
        with _Timer(seconds):
            layout = inspect(data, fmt, limits)
        if budget is not None:
            seconds = budget.seconds(layout.pixels)
        with _Timer(seconds):
            chosen, result = _process(data, fmt, layout, limits, quality)
    except _OverBudget:
        raise ImageRejected(422, f"image took longer than {seconds:.3g} s to process") from None
    except MemoryError:
        raise ImageRejected(422, _NO_MEMORY) from None
    finally:
        _after_job()
    with open(dst, "wb") as f:
        f.write(chosen)
    return result


def _process(
    data: bytes, fmt: Format, layout: Layout, limits: Limits, quality: Quality
) -> tuple[bytes, Processed]:
    img = _open(data, fmt, limits)
    frames = _check_dimensions(img, layout, fmt, limits)
    source_info = {str(k): v for k, v in img.info.items()}
    try:
        # Every frame is decoded (and checked) before anything is kept.
        decoded, rotated = _decode(img, frames, fmt, data)
        reencoded = _encode(decoded, fmt, source_info, quality)
    except _DECODE_ERRORS as exc:
        if "memory" in str(exc).lower():  # a decoder that could not allocate
            raise ImageRejected(422, _NO_MEMORY) from exc
        raise ImageRejected(422, f"{fmt.pillow} image is corrupt or truncated") from exc
    except RuntimeError as exc:
        # The AVIF and WebP encoders report a failed allocation only as "encoding failed";
        # under the worker's memory ceiling that is what it is.
        if _memory_limited:
            raise ImageRejected(422, _NO_MEMORY) from exc
        raise ImageRejected(422, f"{fmt.pillow} image could not be processed ({exc})") from exc
    # A stripped original loses the EXIF orientation, so it only qualifies when upright.
    stripped = None if rotated else _stripped_original(data, fmt, source_info, layout)
    chosen = stripped if stripped is not None and len(stripped) <= len(reencoded) else reencoded
    width, height = decoded[0].size
    return chosen, Processed(
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


# --- worker process --------------------------------------------------------------------------

_libc: Any = None
_memory_limited = False
_recycle_bytes = 0
_trim_bytes = 0
_recycle = False
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_PR_SET_PDEATHSIG = 1
_WORKER_BASE_MIB = 128


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _after_job() -> None:
    """Give freed memory back to the kernel; flag the worker for replacement if it stays big."""
    global _recycle
    if _libc is None:
        return
    rss = _rss()
    # Trimming returns every free heap page, which the next image then faults back in: ~10 % of
    # a 1 MP image's time. So only a worker that grew past its usual size (a large image) trims.
    if rss > _trim_bytes:
        _libc.malloc_trim(0)
        rss = _rss()
    if _recycle_bytes and rss > _recycle_bytes:
        _recycle = True


def _recycling_tasks(tasks: Any) -> Any:
    """pebble's task generator, ending (so the worker exits and pebble starts a fresh one) after
    a job that left the worker over its memory mark: its result has been sent by then."""

    def next_tasks(channel: Any, max_tasks: int) -> Iterator[Any]:
        for task in tasks(channel, max_tasks):
            yield task
            if _recycle:
                return

    return next_tasks


def init_worker(
    limits: Limits, cache_mib: int, memory_mib: int = 0, recycle_mib: int = 0, nice: int = 0
) -> None:
    """Once per worker process: plugins registered, Pillow's own decompression-bomb guard set to
    our limit (a second line of defence behind the header check), its block cache sized, and
    (in a real worker) the memory ceiling and recycling; ``nice`` lowers its CPU priority."""
    global _libc, _recycle_bytes, _trim_bytes, _memory_limited
    if nice:
        os.nice(nice)
        # Linux: the idle class as well. A nice-19 worker still ran until the scheduler's next
        # tick when an upload's process woke up; an idle-class one is preempted at once, so
        # background variants no longer stretch the uploads' handoffs.
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    Image.init()
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    # Without a cache every bitmap is fresh memory from the kernel: a 12 MP image costs ~12,000
    # page faults, 9 % of its processing time (docs/performance.md). Freed blocks kept for the
    # next image cost no more at peak, only idle memory after the first upload.
    pillow_core.set_blocks_max(cache_mib * 2**20 // pillow_core.get_block_size())
    if memory_mib:
        limit = memory_mib * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _memory_limited = True
    if recycle_mib:
        _recycle_bytes = recycle_mib * 2**20
        # The interpreter, Pillow and its plugins take ~70 MiB; the block cache its own size.
        _trim_bytes = (cache_mib + _WORKER_BASE_MIB) * 2**20
        name = ctypes.util.find_library("c")
        if name:
            _libc = ctypes.CDLL(name)
            # Big buffers (decoder and encoder work memory) come from mmap and go back to the
            # kernel when freed, instead of staying in the heap; and few malloc arenas, each of
            # which reserves 64 MiB of address space under the ceiling.
            _libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
            _libc.mallopt(_M_TRIM_THRESHOLD, 4 << 20)
            _libc.mallopt(_M_ARENA_MAX, 2)
        # pebble has no "retire this worker" call; its task generator (the max_tasks path) is
        # wrapped instead. A pebble without it just keeps its workers (trimmed, not replaced).
        from pebble.pool import process as pebble_process

        tasks = getattr(pebble_process, "worker_get_next_task", None)
        if tasks is not None:
            pebble_process.worker_get_next_task = _recycling_tasks(tasks)


def die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent, the forkserver, exits, and the
    forkserver exits when the server's process ends, however it ends. A worker stopped by
    variants/yielding.py would otherwise stay behind, stopped, if the server were killed."""
    if not sys.platform.startswith("linux"):
        return
    _close_forkserver_alive_pipe()
    parent = os.getppid()
    # The process's own symbols (libc's among them): no library search at each worker start.
    if ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return
    if os.getppid() != parent:  # it died before the call: nobody will tell us
        os._exit(1)


def _close_forkserver_alive_pipe() -> None:
    """The forkserver exits when the write end of its "alive" pipe is closed everywhere, but
    multiprocessing gives every child a copy: a stopped worker kept it, and so itself, alive
    forever. A worker starts no processes and never asks whether its parent lives, the uses of
    that copy; every descriptor of that pipe is closed."""
    from multiprocessing import forkserver

    server: Any = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if server is None or alive is None:  # not a forkserver child
        return
    try:
        pipe = os.fstat(alive)
    except OSError:
        return
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (pipe.st_dev, pipe.st_ino):
                os.close(fd)
    server._forkserver_alive_fd = None


def warm_up() -> int:
    """A no-op task that makes the pool start a worker."""
    return os.getpid()
