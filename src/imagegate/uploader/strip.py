"""Lossless metadata removal by allow-list: the original's pixels untouched, and only the parts
needed to render them kept, each checked for its exact shape.

Each function walks the container and rebuilds it from the parts it knows (so unknown, private
or oversized blocks go, whatever their marker), checks the contents of what it keeps (a JFIF
header of its fixed size, an ICC profile that parses as one and is at most 1 MiB…), and drops
anything after the end marker (where polyglot payloads hide). They return None when the
structure is not what they expect; the caller then stores the re-encoded image instead.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable

ICC_MAX_BYTES = 1 << 20


def valid_icc(profile: bytes) -> bool:
    """Whether ``profile`` is shaped like an ICC profile: header size field equal to its length,
    the 'acsp' signature, and a tag table that stays inside it; at most 1 MiB."""
    if not 132 <= len(profile) <= ICC_MAX_BYTES:
        return False
    size = struct.unpack(">I", profile[:4])[0]
    if size != len(profile) or profile[36:40] != b"acsp":
        return False
    count = struct.unpack(">I", profile[128:132])[0]
    if 132 + 12 * count > size:
        return False
    for i in range(count):
        offset, length = struct.unpack(">II", profile[136 + 12 * i : 144 + 12 * i])
        if offset < 132 or offset + length > size:
            return False
    return True


# --- JPEG ---------------------------------------------------------------------------------

# Segments kept as they are: frame headers (baseline, extended, progressive), Huffman and
# quantization tables, restart interval, scans. APP0/APP2/APP14 are kept only when checked.
_JPEG_STRUCTURE = {0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD, 0xDA}
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_ICC_ID = b"ICC_PROFILE\x00"
_ICC_CHUNK = 65519  # payload bytes per APP2 segment


def _jfif_ok(payload: bytes) -> bool:
    # identifier, version (2), units, densities (2+2), thumbnail 0x0: exactly 14 bytes
    return len(payload) == 14 and payload[:5] == b"JFIF\x00" and payload[12:14] == b"\0\0"


def _adobe_ok(payload: bytes) -> bool:
    # "Adobe", version, flags0, flags1, colour transform: exactly 12 bytes
    return len(payload) == 12 and payload[:5] == b"Adobe"


def _icc_segments(chunks: dict[int, bytes], total: int) -> list[bytes]:
    """The APP2 segments of a profile reassembled from its chunks, if it checks out."""
    if total < 1 or sorted(chunks) != list(range(1, total + 1)):
        return []
    profile = b"".join(chunks[i] for i in range(1, total + 1))
    if not valid_icc(profile):
        return []
    parts = [profile[i : i + _ICC_CHUNK] for i in range(0, len(profile), _ICC_CHUNK)]
    return [
        b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(p)) + _ICC_ID + bytes([n, len(parts)]) + p
        for n, p in enumerate(parts, 1)
    ]


def strip_jpeg(data: bytes, scan_ends: tuple[int, ...] = ()) -> bytes | None:
    """``scan_ends``: where each scan's entropy-coded data ends, when the container walk already
    found them (saves searching a whole file again)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    scans = iter(scan_ends)
    head: list[bytes | memoryview] = [b"\xff\xd8"]
    icc_chunks: dict[int, bytes] = {}
    icc_total = 0
    head_done = False  # APP0/APP14 count only before the first scan
    body: list[bytes | memoryview] = []
    view = memoryview(data)
    pos = 2
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            body.append(b"\xff\xd9")
            icc = _icc_segments(icc_chunks, icc_total)
            return b"".join([*head, *icc, *body])
        if pos + 4 > len(data):
            return None
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if length < 2 or end > len(data):
            return None
        payload = data[pos + 4 : end] if marker >= 0xE0 else b""
        header_ok = (marker == 0xE0 and _jfif_ok(payload)) or (
            marker == 0xEE and _adobe_ok(payload)
        )
        if header_ok and not head_done:
            head.append(view[pos:end])
        elif marker == 0xE2 and payload[:12] == _ICC_ID and len(payload) > 14:
            seq, count = payload[12], payload[13]
            if icc_total not in (0, count) or seq in icc_chunks:
                icc_chunks, icc_total = {}, -1  # inconsistent chunks: drop the profile
            elif icc_total >= 0:
                icc_total = count
                icc_chunks[seq] = payload[14:]
        elif marker in _JPEG_STRUCTURE:
            if marker == 0xDA:
                head_done = True
                # The scan header, then its entropy-coded data up to the next real marker.
                known = next(scans, None)
                if known is None:
                    found = _MARKER_IN_SCAN.search(data, end)
                    if found is None:
                        return None
                    known = found.start()
                if known < end:
                    return None
                end = known
            # A view, not a slice: the scan data is nearly the whole file, copied once by join.
            body.append(view[pos:end])
        # Everything else (other APPn, COM, unknown markers) is left out.
        pos = end
    return None


# --- PNG ----------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks needed to render, each with the size its contents must have (iCCP has its own check
# below). Text, time, EXIF, private and unknown chunks all go.
_PNG_SIZES: dict[bytes, Callable[[int], bool]] = {
    b"IHDR": lambda n: n == 13,
    b"PLTE": lambda n: 3 <= n <= 768 and n % 3 == 0,
    b"IDAT": lambda n: True,
    b"IEND": lambda n: n == 0,
    b"tRNS": lambda n: n <= 256,
    b"gAMA": lambda n: n == 4,
    b"cHRM": lambda n: n == 32,
    b"sRGB": lambda n: n == 1,
    b"sBIT": lambda n: 1 <= n <= 4,
    b"bKGD": lambda n: n in (1, 2, 6),
    b"pHYs": lambda n: n == 9,
    b"cICP": lambda n: n == 4,
    b"mDCV": lambda n: n == 24,
    b"cLLI": lambda n: n == 8,
    b"acTL": lambda n: n == 8,
    b"fcTL": lambda n: n == 26,
    b"fdAT": lambda n: n >= 4,
}


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def icc_from_iccp(body: bytes) -> bytes | None:
    """The profile of an iCCP chunk, decompressed up to 1 MiB and checked, else None."""
    name_end = body.find(b"\0", 0, 80)
    if name_end < 1 or body[name_end + 1 : name_end + 2] != b"\0":
        return None
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(body[name_end + 2 :], ICC_MAX_BYTES + 1)
    except zlib.error:
        return None
    if not inflater.eof or len(profile) > ICC_MAX_BYTES:
        return None
    return profile if valid_icc(profile) else None


def strip_png(data: bytes) -> bytes | None:
    if not data.startswith(_PNG_SIGNATURE):
        return None
    out: list[bytes | memoryview] = [_PNG_SIGNATURE]
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind == b"iCCP":
            profile = icc_from_iccp(data[pos + 8 : end - 4])
            if profile is not None:
                # The profile name is free text: replaced by a fixed one.
                out.append(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(profile)))
        else:
            rule = _PNG_SIZES.get(kind)
            if rule is not None and rule(length):
                out.append(view[pos:end])
        if kind == b"IEND":
            return b"".join(out)
        pos = end
    return None


# --- WebP ---------------------------------------------------------------------------------

_WEBP_BITSTREAM = {b"VP8 ", b"VP8L", b"ALPH"}
_VP8X_ICC, _VP8X_EXIF, _VP8X_XMP = 0x20, 0x08, 0x04


def _riff(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def _webp_chunks(data: bytes, pos: int, end: int) -> list[tuple[bytes, bytes]] | None:
    chunks = []
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > end:
            return None
        chunks.append((kind, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def strip_webp(data: bytes) -> bytes | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    if riff_end > len(data):
        return None
    chunks = _webp_chunks(data, 12, riff_end)
    if chunks is None:
        return None
    icc = next((body for kind, body in chunks if kind == b"ICCP"), None)
    keep_icc = icc is not None and valid_icc(icc)
    out = []
    for kind, body in chunks:
        if kind == b"VP8X" and len(body) == 10:
            flags = body[0] & ~(_VP8X_EXIF | _VP8X_XMP | (0 if keep_icc else _VP8X_ICC))
            out.append(_riff(kind, bytes([flags]) + body[1:]))
        elif kind == b"ICCP" and keep_icc:
            out.append(_riff(kind, body))
            keep_icc = False  # one profile
        elif kind == b"ANIM" and len(body) == 6:
            out.append(_riff(kind, body))
        elif kind == b"ANMF" and len(body) >= 16:
            inner = _webp_chunks(body, 16, len(body))
            if inner is None:
                return None
            kept = b"".join(_riff(k, b) for k, b in inner if k in _WEBP_BITSTREAM)
            out.append(_riff(kind, body[:16] + kept))
        elif kind in _WEBP_BITSTREAM:
            out.append(_riff(kind, body))
    riff_body = b"WEBP" + b"".join(out)
    return b"RIFF" + struct.pack("<I", len(riff_body)) + riff_body


# --- GIF ----------------------------------------------------------------------------------

_GIF_LOOP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")


def _gif_sub_blocks(data: bytes, pos: int) -> tuple[list[bytes], int]:
    blocks: list[bytes] = []
    while True:
        size = data[pos]
        if size == 0:
            return blocks, pos + 1
        blocks.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size


def strip_gif(data: bytes) -> bytes | None:
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        return None
    try:
        flags = data[10]
        pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
        # GIF89a always: the kept extensions are 89a ones.
        out: list[bytes | memoryview] = [b"GIF89a", data[6:pos]]
        view = memoryview(data)
        while True:
            block = data[pos]
            if block == 0x3B:  # trailer
                out.append(b"\x3b")
                return b"".join(out)
            if block == 0x21:  # extension: label, then sub-blocks
                label = data[pos + 1]
                blocks, end = _gif_sub_blocks(data, pos + 2)
                if label == 0xF9 and len(blocks) == 1 and len(blocks[0]) == 4:
                    out.append(b"\x21\xf9\x04" + blocks[0] + b"\0")  # graphic control
                elif (
                    label == 0xFF
                    and len(blocks) == 2
                    and blocks[0] in _GIF_LOOP_APPS
                    and len(blocks[1]) == 3
                    and blocks[1][0] == 1
                ):
                    # The loop count, re-written in its one standard form.
                    out.append(b"\x21\xff\x0bNETSCAPE2.0\x03" + blocks[1] + b"\0")
                # Comments, plain text, XMP, ICC and other application blocks go.
                pos = end
            elif block == 0x2C:  # image descriptor, optional local table, LZW code size
                flags = data[pos + 9]
                start = pos + 10 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0) + 1
                _, end = _gif_sub_blocks(data, start)
                out.append(view[pos:end])
                pos = end
            else:
                return None
    except IndexError:
        return None


STRIPPERS = {"JPEG": strip_jpeg, "PNG": strip_png, "WEBP": strip_webp, "GIF": strip_gif}
