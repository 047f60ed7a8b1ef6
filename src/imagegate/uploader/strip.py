"""Lossless metadata removal: the original's pixels untouched, EXIF/GPS/XMP/comments gone.

Each function walks the container and keeps an allow-list of the parts needed to render the
image (so unknown or private blocks go too), and drops anything after the end marker (where
polyglot payloads hide). They return None when the structure is not what they expect; the
caller then stores the re-encoded image instead.
"""

from __future__ import annotations

import struct

# JPEG: APP0 (JFIF), APP2 (ICC profile, not MPF), APP14 (Adobe colour transform) are kept.
_JPEG_KEEP_APP = {0xE0, 0xEE}


def strip_jpeg(data: bytes) -> bytes | None:
    if not data.startswith(b"\xff\xd8"):
        return None
    out: list[bytes | memoryview] = [b"\xff\xd8"]
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segment = data[pos : pos + 2 + length]
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the first EOI
            end = data.find(b"\xff\xd9", pos + 2 + length)
            if end < 0:
                return None
            # A view, not a slice: the scan data is nearly the whole file, copied once by join.
            out.append(memoryview(data)[pos : end + 2])
            return b"".join(out)
        is_app = 0xE0 <= marker <= 0xEF
        keep_icc = marker == 0xE2 and segment[4:16] == b"ICC_PROFILE\x00"
        if not (is_app or marker == 0xFE) or marker in _JPEG_KEEP_APP or keep_icc:
            out.append(segment)
        pos += 2 + length
    return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = {
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
    b"bKGD", b"pHYs", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCV", b"cLLI",
}  # fmt: skip


def strip_png(data: bytes) -> bytes | None:
    if not data.startswith(_PNG_SIGNATURE):
        return None
    out = [_PNG_SIGNATURE]
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind in _PNG_KEEP:
            out.append(data[pos:end])
        if kind == b"IEND":
            return b"".join(out)
        pos = end
    return None


_WEBP_KEEP = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"}
_VP8X_EXIF_XMP_FLAGS = 0x08 | 0x04


def strip_webp(data: bytes) -> bytes | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    if riff_end > len(data):
        return None
    chunks = []
    pos = 12
    while pos + 8 <= riff_end:
        kind = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = pos + 8 + size + (size & 1)
        if end > riff_end:
            return None
        chunk = data[pos:end]
        if kind == b"VP8X":
            flags = chunk[8] & ~_VP8X_EXIF_XMP_FLAGS
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
        if kind in _WEBP_KEEP:
            chunks.append(chunk)
        pos = end
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


_GIF_KEEP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")  # the loop count


def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while True:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def strip_gif(data: bytes) -> bytes | None:
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        return None
    try:
        flags = data[10]
        pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
        out = [data[:pos]]
        while True:
            block = data[pos]
            if block == 0x3B:  # trailer
                out.append(b"\x3b")
                return b"".join(out)
            if block == 0x21:  # extension: label, then sub-blocks
                label = data[pos + 1]
                end = _gif_sub_blocks_end(data, pos + 2)
                app_id = data[pos + 3 : pos + 14] if label == 0xFF else b""
                if label in (0xF9, 0x01) or app_id in _GIF_KEEP_APPS:
                    out.append(data[pos:end])
                pos = end
            elif block == 0x2C:  # image descriptor, optional local table, LZW code size
                flags = data[pos + 9]
                start = pos + 10 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0) + 1
                end = _gif_sub_blocks_end(data, start)
                out.append(data[pos:end])
                pos = end
            else:
                return None
    except IndexError:
        return None


STRIPPERS = {"JPEG": strip_jpeg, "PNG": strip_png, "WEBP": strip_webp, "GIF": strip_gif}
