"""Images made on the fly for tests: photos with EXIF, animations, and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def photo(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A noisy-enough RGB picture that compresses like a photo, different per seed."""
    img = Image.radial_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for i in range(0, width, 23):
        draw.line((i, 0, width - i, height), fill=((i * 7 + seed * 31) % 256, 90, 170), width=3)
    draw.ellipse(
        (seed % 50, seed % 40, width // 2, height // 2), outline=(255, seed % 256, 0), width=5
    )
    return img


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def jpeg(
    width: int = 640,
    height: int = 480,
    *,
    seed: int = 0,
    quality: int = 92,
    orientation: int | None = None,
    gps: bool = False,
    comment: bytes | None = None,
) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    if orientation is not None:
        exif[ORIENTATION] = orientation
    if gps:
        exif[GPS_IFD] = {1: "N", 2: (55.0, 45.0, 21.0), 3: "E", 4: (37.0, 37.0, 4.0)}
    options: dict[str, object] = {"quality": quality, "exif": exif.tobytes()}
    if comment is not None:
        options["comment"] = comment
    return encode(photo(width, height, seed), "JPEG", **options)


def animated(
    fmt: str = "GIF",
    frames: int = 4,
    size: int = 64,
    durations: list[int] | None = None,
    **options: object,
) -> bytes:
    pictures = []
    for i in range(frames):
        im = Image.new("RGB", (size, size), (i * 40 % 256, 0, 0))
        ImageDraw.Draw(im).rectangle(
            (i % size, i % size, i % size + 8, i % size + 8), fill=(0, 255, 0)
        )
        pictures.append(im.convert("P") if fmt == "GIF" else im)
    durations = durations or [40 + 10 * (i % 5) for i in range(frames)]
    return encode(
        pictures[0],
        fmt,
        save_all=True,
        append_images=pictures[1:],
        duration=durations,
        loop=0,
        **options,
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; the pixel data is a token few bytes."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def gif_many_frames(frames: int) -> bytes:
    """A tiny animated GIF with ``frames`` distinct frames."""
    return animated("GIF", frames=frames, size=4, durations=[20] * frames)


NOT_IMAGES: dict[str, bytes] = {
    "text": b"hello, this is plain text and not an image at all\n" * 4,
    "html": b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
    "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x00\x00" + b"\x00" * 40,
    "svg": (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><script>alert(1)</script><rect width="10" height="10"/></svg>'
    ),
}
