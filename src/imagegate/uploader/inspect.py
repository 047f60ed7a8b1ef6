"""Walk an upload's container before any pixel is decoded: what every frame declares, checked
against the limits, so a decoder never allocates for a size the checks did not see.

Decoders trust more than the header: Pillow grows a GIF canvas to fit a later frame, an APNG or
animated WebP frame has its own size, an AVIF's real frame size is in its AV1 sequence header,
and a progressive JPEG may repeat scans (each one a full decoding pass). The walkers here read
those declarations with plain byte parsing (cheap: no entropy decoding) and refuse structures
that cannot be complete (a JPEG scan shorter than its blocks need, no end marker).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from math import ceil

from imagegate.uploader.formats import AVIF, GIF, JPEG, PNG, WEBP, Format


class ImageRejected(Exception):
    """The upload is not an acceptable image; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_side: int
    max_frames: int
    max_scans: int = 100


@dataclass(frozen=True)
class Layout:
    """What the container declares: the canvas every frame is decoded into, and the work."""

    width: int
    height: int
    frames: int
    pixels: int  # pixels decoding every frame produces (each frame is a full canvas)
    scans: int = 1
    # AVIF only: the AV1 sequence headers agree with the declared sizes (so the original's
    # bytes describe what was decoded and may be kept).
    consistent: bool = True
    # JPEG only: where each scan's entropy-coded data ends (the stripper copies up to there).
    scan_ends: tuple[int, ...] = ()


def corrupt(fmt: Format, what: str = "is corrupt or truncated") -> ImageRejected:
    return ImageRejected(422, f"{fmt.pillow} image {what}")


def check_size(width: int, height: int, frames: int, pixels: int, limits: Limits) -> None:
    """The limits on one canvas and all its frames, in the words a client sees."""
    if width < 1 or height < 1:
        raise ImageRejected(422, "image has no pixels")
    if max(width, height) > limits.max_side:
        raise ImageRejected(
            422, f"image is {width}x{height}; at most {limits.max_side} pixels a side"
        )
    if frames > limits.max_frames:
        raise ImageRejected(422, f"animation has {frames} frames; at most {limits.max_frames}")
    if pixels > limits.max_pixels:
        raise ImageRejected(
            422,
            f"image is {width}x{height}x{frames} frames; at most {limits.max_pixels} pixels in all",
        )


def inspect(data: bytes, fmt: Format, limits: Limits) -> Layout:
    """The layout ``data`` declares, checked against ``limits``; raises ImageRejected."""
    walker = _WALKERS[fmt.pillow]
    try:
        layout = walker(data, fmt, limits)
    except (IndexError, struct.error, ValueError, RecursionError) as exc:
        raise corrupt(fmt) from exc
    check_size(layout.width, layout.height, layout.frames, layout.pixels, limits)
    return layout


# --- JPEG ---------------------------------------------------------------------------------

# Huffman-coded baseline, extended and progressive frames. Arithmetic-coded, lossless and
# hierarchical JPEGs are refused: browsers do not render them, and they defeat the scan checks.
_SOF_SEQUENTIAL = {0xC0, 0xC1}
_SOF_PROGRESSIVE = 0xC2
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# The end of entropy-coded data: 0xFF followed by anything but stuffing (00), RSTn or fill.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass
class _Frame:
    width: int
    height: int
    progressive: bool
    components: dict[int, tuple[int, int]]  # id → (h, v) sampling factors
    hmax: int
    vmax: int

    def blocks(self, ids: list[int]) -> int:
        """Blocks (8x8 units) one scan over ``ids`` codes."""
        if len(ids) == 1:  # non-interleaved: the component's own size
            h, v = self.components[ids[0]]
            w = ceil(self.width * h / self.hmax)
            hh = ceil(self.height * v / self.vmax)
            return ceil(w / 8) * ceil(hh / 8)
        mcus = ceil(self.width / (8 * self.hmax)) * ceil(self.height / (8 * self.vmax))
        return mcus * sum(self.components[i][0] * self.components[i][1] for i in ids)


def _jpeg_frame(segment: bytes, marker: int) -> _Frame:
    _precision, height, width, count = struct.unpack(">BHHB", segment[:6])
    components = {}
    for i in range(count):
        cid, sampling = segment[6 + 3 * i], segment[7 + 3 * i]
        h, v = sampling >> 4, sampling & 15
        if not (1 <= h <= 4 and 1 <= v <= 4):
            raise ValueError("bad sampling factor")
        components[cid] = (h, v)
    if not components or len(components) != count:
        raise ValueError("bad component list")
    hmax = max(h for h, _ in components.values())
    vmax = max(v for _, v in components.values())
    return _Frame(width, height, marker == _SOF_PROGRESSIVE, components, hmax, vmax)


def _walk_jpeg(data: bytes, fmt: Format, limits: Limits) -> Layout:
    frame: _Frame | None = None
    scans = 0
    scan_ends: list[int] = []
    dc_done: set[int] = set()  # components whose DC (first pass) has been coded
    pos = 2
    end = len(data)
    while True:
        if pos + 2 > end:
            raise corrupt(fmt, "ends early (no end-of-image marker)")
        if data[pos] != 0xFF:
            raise corrupt(fmt)
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE or marker == 0xD8:
            pos += 2
            continue
        if pos + 4 > end:
            raise corrupt(fmt, "ends early (no end-of-image marker)")
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if length < 2 or pos + 2 + length > end:
            raise corrupt(fmt, "ends early (a segment runs past the end of the file)")
        segment = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker in _SOF_OTHER:
            raise ImageRejected(
                415, "JPEG variant not accepted (arithmetic, lossless or hierarchical coding)"
            )
        if marker in _SOF_SEQUENTIAL or marker == _SOF_PROGRESSIVE:
            if frame is not None:
                raise corrupt(fmt, "has two frame headers")
            frame = _jpeg_frame(segment, marker)
            if frame.height == 0:
                raise corrupt(fmt, "declares no height (DNL is not accepted)")
            # Sizes first: the scan arithmetic below is only worth doing within the limits.
            check_size(frame.width, frame.height, 1, frame.width * frame.height, limits)
            continue
        if marker != 0xDA:
            continue
        # Start of scan: its header, then entropy-coded data up to the next real marker.
        if frame is None:
            raise corrupt(fmt, "has a scan before its frame header")
        scans += 1
        if scans > limits.max_scans:
            raise ImageRejected(422, f"JPEG image has more than {limits.max_scans} scans")
        count = segment[0]
        ids = [segment[1 + 2 * i] for i in range(count)]
        ss, _se, a = segment[1 + 2 * count : 4 + 2 * count]
        ah = a >> 4
        if not ids or any(i not in frame.components for i in ids):
            raise corrupt(fmt, "has a scan of unknown components")
        found = _MARKER_IN_SCAN.search(data, pos)
        if found is None:
            raise corrupt(fmt, "ends early (a scan runs to the end of the file)")
        coded = found.start() - pos
        pos = found.start()
        scan_ends.append(pos)
        # The fewest bits a complete scan can take: a sequential block needs a DC code and an
        # end-of-block code (1 bit each at least), a first DC pass one code per block, a DC
        # refinement one bit per block. AC passes can cover runs of blocks in a few bits.
        blocks = frame.blocks(ids)
        if not frame.progressive:
            min_bits = 2 * blocks
            dc_done.update(ids)
        elif ss == 0:
            if ah == 0:
                dc_done.update(ids)
            elif not set(ids) <= dc_done:
                raise corrupt(fmt, "refines a DC pass it never had")
            min_bits = blocks
        else:
            if not set(ids) <= dc_done:
                raise corrupt(fmt, "has an AC pass before its DC pass")
            min_bits = 0
        if coded * 8 < min_bits:
            raise corrupt(
                fmt, f"ends early ({coded} bytes of scan data for {blocks} blocks of 8x8)"
            )
    if frame is None or scans == 0:
        raise corrupt(fmt, "has no image data")
    if dc_done != set(frame.components):
        raise corrupt(fmt, "ends early (a component was never coded)")
    pixels = frame.width * frame.height
    return Layout(frame.width, frame.height, 1, pixels, scans, scan_ends=tuple(scan_ends))


# --- PNG ----------------------------------------------------------------------------------


def _walk_png(data: bytes, fmt: Format, limits: Limits) -> Layout:
    pos = 8
    width = height = 0
    declared_frames: int | None = None
    frames = 0
    idat = False
    hidden_default = False
    while True:
        if pos + 12 > len(data):
            raise corrupt(fmt, "ends early (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if pos + 12 + length > len(data):
            raise corrupt(fmt, "ends early (a chunk runs past the end of the file)")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13 or width:
                raise corrupt(fmt, "has a bad IHDR chunk")
            width, height = struct.unpack(">II", body[:8])
            check_size(width, height, 1, width * height, limits)
        elif not width:
            raise corrupt(fmt, "does not start with IHDR")
        elif kind == b"IDAT":
            # An APNG whose first frame control comes after the image data has a default image
            # outside the animation: Pillow decodes it as one more frame.
            hidden_default = hidden_default or (
                not idat and declared_frames is not None and not frames
            )
            idat = True
        elif kind == b"acTL":
            if length != 8 or declared_frames is not None:
                raise corrupt(fmt, "has a bad acTL chunk")
            declared_frames = struct.unpack(">I", body[:4])[0]
            check_size(width, height, declared_frames, width * height * declared_frames, limits)
        elif kind == b"fcTL":
            if length != 26:
                raise corrupt(fmt, "has a bad fcTL chunk")
            w, h, x, y = struct.unpack(">IIII", body[4:20])
            if w < 1 or h < 1 or x + w > width or y + h > height:
                raise corrupt(fmt, f"has a {w}x{h} frame at {x},{y} outside its {width}x{height}")
            frames += 1
            if frames > limits.max_frames:
                raise ImageRejected(
                    422, f"animation has {frames} frames; at most {limits.max_frames}"
                )
        elif kind == b"IEND":
            break
    if not idat:
        raise corrupt(fmt, "has no image data")
    if declared_frames is not None and frames != declared_frames:
        raise corrupt(fmt, f"declares {declared_frames} frames but has {frames}")
    count = max(frames, 1) + hidden_default if declared_frames is not None else 1
    return Layout(width, height, count, width * height * count)


# --- GIF ----------------------------------------------------------------------------------


def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while True:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _walk_gif(data: bytes, fmt: Format, limits: Limits) -> Layout:
    try:
        return _walk_gif_blocks(data, fmt, limits)
    except IndexError as exc:  # a block runs past the end of the file
        raise corrupt(fmt, "ends early (no trailer)") from exc


def _walk_gif_blocks(data: bytes, fmt: Format, limits: Limits) -> Layout:
    screen_w, screen_h, flags = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    width, height, frames = screen_w, screen_h, 0
    while True:
        if pos >= len(data):
            raise corrupt(fmt, "ends early (no trailer)")
        block = data[pos]
        if block == 0x3B:
            break
        if block == 0x21:
            pos = _gif_sub_blocks_end(data, pos + 2)
        elif block == 0x2C:
            x, y, w, h, flags = struct.unpack("<HHHHB", data[pos + 1 : pos + 10])
            frames += 1
            # Pillow would grow the canvas to hold a frame that does not fit, past the checks.
            if x + w > width or y + h > height:
                raise corrupt(fmt, f"has a {w}x{h} frame at {x},{y} outside its {width}x{height}")
            check_size(width, height, frames, width * height * frames, limits)
            start = pos + 10 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            pos = _gif_sub_blocks_end(data, start)
        else:
            raise corrupt(fmt)
    if frames == 0:
        raise corrupt(fmt, "has no image data")
    if pos > len(data):
        raise corrupt(fmt, "ends early")
    return Layout(width, height, frames, width * height * frames)


# --- WebP ---------------------------------------------------------------------------------


def _vp8_size(kind: bytes, body: bytes) -> tuple[int, int]:
    if kind == b"VP8 ":
        if body[3:6] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 frame")
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L":
        if body[0] != 0x2F:
            raise ValueError("bad VP8L signature")
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ValueError("not a bitstream chunk")


def _riff_chunks(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    chunks = []
    pos = start
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > end:
            raise ValueError("chunk past the end")
        chunks.append((kind, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def _walk_webp(data: bytes, fmt: Format, limits: Limits) -> Layout:
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    if riff_end > len(data):
        raise corrupt(fmt, "ends early (shorter than its RIFF size)")
    try:
        chunks = _riff_chunks(data, 12, riff_end)
    except ValueError as exc:
        raise corrupt(fmt, "ends early (a chunk runs past the end of the file)") from exc
    if not chunks:
        raise corrupt(fmt, "has no image data")
    kind, body = chunks[0]
    if kind != b"VP8X":
        width, height = _vp8_size(kind, body)
        return Layout(width, height, 1, width * height)
    width = int.from_bytes(body[4:7], "little") + 1
    height = int.from_bytes(body[7:10], "little") + 1
    check_size(width, height, 1, width * height, limits)
    frames = 0
    for kind, body in chunks[1:]:
        if kind in (b"VP8 ", b"VP8L"):
            w, h = _vp8_size(kind, body)
            if (w, h) != (width, height):
                raise corrupt(fmt, f"declares {width}x{height} but its bitstream is {w}x{h}")
            frames += 1
        elif kind == b"ANMF":
            x = 2 * int.from_bytes(body[0:3], "little")
            y = 2 * int.from_bytes(body[3:6], "little")
            w = int.from_bytes(body[6:9], "little") + 1
            h = int.from_bytes(body[9:12], "little") + 1
            if x + w > width or y + h > height:
                raise corrupt(fmt, f"has a {w}x{h} frame at {x},{y} outside its {width}x{height}")
            inner = [c for c in _riff_chunks(body, 16, len(body)) if c[0] in (b"VP8 ", b"VP8L")]
            if len(inner) != 1 or _vp8_size(*inner[0]) != (w, h):
                raise corrupt(fmt, "has a frame whose bitstream disagrees with its size")
            frames += 1
            check_size(width, height, frames, width * height * frames, limits)
    if frames == 0:
        raise corrupt(fmt, "has no image data")
    return Layout(width, height, frames, width * height * frames)


# --- AVIF ---------------------------------------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"iprp", b"ipco", b"dinf"}


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:end]``."""
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError("box past the end")
        out.append((kind, pos + header, pos + size))
        pos += size
    return out


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = 8 * len(data)

    def read(self, n: int) -> int:
        if n > self.left:
            raise ValueError("sequence header too short")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("bad leb128")


def _av1_max_size(obus: bytes) -> tuple[int, int] | None:
    """max_frame_width/height of the AV1 sequence header among ``obus``, if there is one."""
    pos = 0
    while pos < len(obus):
        header = obus[pos]
        kind, has_ext, has_size = (header >> 3) & 15, header >> 2 & 1, header >> 1 & 1
        pos += 1 + has_ext
        if not has_size:
            size = len(obus) - pos
        else:
            size, pos = _leb128(obus, pos)
        payload = obus[pos : pos + size]
        pos += size
        if kind != 1:  # OBU_SEQUENCE_HEADER
            continue
        bits = _Bits(payload[:64])
        bits.read(3)  # seq_profile
        bits.read(1)  # still_picture
        if bits.read(1):  # reduced_still_picture_header
            bits.read(5)
        else:
            timing = bits.read(1)
            decoder_model = 0
            delay_length = 0
            if timing:
                bits.read(64)
                if bits.read(1):  # equal_picture_interval: uvlc
                    zeros = 0
                    while not bits.read(1):
                        zeros += 1
                    bits.read(zeros)
                decoder_model = bits.read(1)
                if decoder_model:
                    delay_length = bits.read(5) + 1
                    bits.read(32 + 5 + 5)
            display_delay = bits.read(1)
            for _ in range(bits.read(5) + 1):
                bits.read(12)
                if bits.read(5) > 7:
                    bits.read(1)
                if decoder_model and bits.read(1):
                    bits.read(2 * delay_length + 1)
                if display_delay and bits.read(1):
                    bits.read(4)
        width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
        return bits.read(width_bits) + 1, bits.read(height_bits) + 1
    return None


def _uint(data: bytes, pos: int, size: int) -> tuple[int, int]:
    return int.from_bytes(data[pos : pos + size], "big"), pos + size


def _av01_items(data: bytes, iinf: tuple[int, int], iloc: tuple[int, int]) -> list[bytes]:
    """The first bytes of every AV1 item's data (where its sequence header is)."""
    av01 = set()
    a, b = iinf
    version = data[a]
    for kind, x, _y in _boxes(data, a + (6 if version == 0 else 8), b):
        if kind == b"infe" and data[x] >= 2:
            id_size = 2 if data[x] == 2 else 4
            item, pos = _uint(data, x + 4, id_size)
            if data[pos + 2 : pos + 6] == b"av01":
                av01.add(item)
    a, b = iloc
    version = data[a]
    offset_size, length_size = data[a + 4] >> 4, data[a + 4] & 15
    base_size, index_size = data[a + 5] >> 4, data[a + 5] & 15
    count, pos = _uint(data, a + 6, 2 if version < 2 else 4)
    out = []
    for _ in range(count):
        item, pos = _uint(data, pos, 2 if version < 2 else 4)
        method = 0
        if version in (1, 2):
            method, pos = _uint(data, pos, 2)
            method &= 15
        pos += 2  # data_reference_index
        base, pos = _uint(data, pos, base_size)
        extents, pos = _uint(data, pos, 2)
        first: tuple[int, int] | None = None
        for _ in range(extents):
            if version in (1, 2) and index_size:
                pos += index_size
            offset, pos = _uint(data, pos, offset_size)
            length, pos = _uint(data, pos, length_size)
            first = first or (base + offset, length)
        if item in av01:
            if method != 0 or first is None:
                raise ValueError("AV1 item data not in the file")
            out.append(data[first[0] : first[0] + min(first[1], 256)])
    return out


def _walk_avif(data: bytes, fmt: Format, limits: Limits) -> Layout:
    sizes: list[tuple[int, int]] = []  # ispe, track and sample-entry sizes
    coded: list[tuple[int, int] | None] = []  # each AV1 stream's sequence header size
    frames = 1
    places: dict[bytes, tuple[int, int]] = {}

    def walk(start: int, end: int) -> None:
        nonlocal frames
        for kind, a, b in _boxes(data, start, end):
            if kind in _CONTAINERS:
                walk(a, b)
            elif kind == b"meta":
                walk(a + 4, b)
            elif kind == b"stsd":
                walk(a + 8, b)
            elif kind == b"av01":  # visual sample entry: 78 bytes, then its boxes
                sizes.append(struct.unpack(">HH", data[a + 24 : a + 28]))
                walk(a + 78, b)
            elif kind == b"ispe":
                sizes.append(struct.unpack(">II", data[a + 4 : a + 12]))
            elif kind == b"tkhd":
                offset = a + (88 if data[a] == 1 else 76)
                w, h = struct.unpack(">II", data[offset : offset + 8])
                sizes.append((w >> 16, h >> 16))
            elif kind == b"stsz":
                frames = max(frames, struct.unpack(">I", data[a + 8 : a + 12])[0])
            elif kind == b"av1C" and b - a > 4:  # configOBUs, when the muxer wrote them
                coded.append(_av1_max_size(data[a + 4 : b]))
            elif kind in (b"iinf", b"iloc"):
                places[kind] = (a, b)

    walk(0, len(data))
    if b"iinf" in places and b"iloc" in places:
        # The AV1 streams of the items say what the decoder will really allocate.
        coded.extend(
            _av1_max_size(head) for head in _av01_items(data, places[b"iinf"], places[b"iloc"])
        )
    if not sizes:
        raise corrupt(fmt, "declares no size")
    width = max(w for w, _ in sizes)
    height = max(h for _, h in sizes)
    for w, h in sizes:
        check_size(w, h, 1, w * h, limits)
    check_size(width, height, frames, width * height * frames, limits)
    for size in coded:
        if size is not None:
            # The decoder allocates what the AV1 stream says, whatever the container says.
            w, h = size
            check_size(w, h, frames, w * h * frames, limits)
            if w > width or h > height:
                raise corrupt(fmt, f"declares {width}x{height} but its AV1 stream is {w}x{h}")
    # The original is kept only when its top level holds nothing but the image's own boxes.
    top = {kind for kind, _, _ in _boxes(data, 0, len(data))}
    consistent = (
        top <= {b"ftyp", b"meta", b"moov", b"mdat"}
        and bool(coded)
        and all(size is not None and size[0] <= width and size[1] <= height for size in coded)
    )
    return Layout(width, height, frames, width * height * frames, consistent=consistent)


_WALKERS = {
    JPEG.pillow: _walk_jpeg,
    PNG.pillow: _walk_png,
    GIF.pillow: _walk_gif,
    WEBP.pillow: _walk_webp,
    AVIF.pillow: _walk_avif,
}
