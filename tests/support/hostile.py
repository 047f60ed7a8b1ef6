"""A corpus of hostile uploads, generated with Pillow and byte surgery (nothing downloaded).

Each entry says what the service must answer: 415/422 (with a word of the error), or 201 for
files that are odd but acceptable, with the planted bytes the stored file must not contain.
Generation takes well under a second.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageDraw
from PIL.PngImagePlugin import PngInfo

from tests.support.images import photo

PLANT = b"PLANTED-"  # every planted text starts with this; no stored file may contain it


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    status: int  # the HTTP answer
    error: str = ""  # a word of the error message (4xx)
    unit_status: int | None = None  # process_image's answer when it differs (empty body: 415)
    max_bytes: int | None = None  # 201: the stored file is at most this big


def _save(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_insert(data: bytes, chunks: bytes) -> bytes:
    """``chunks`` right after IHDR."""
    return data[:33] + chunks + data[33:]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_insert(data: bytes, segments: bytes) -> bytes:
    """``segments`` right after SOI."""
    return data[:2] + segments + data[2:]


def _jpeg_set_size(data: bytes, width: int, height: int) -> bytes:
    sof = data.find(b"\xff\xc0")
    if sof < 0:
        sof = data.find(b"\xff\xc2")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def _small_jpeg(quality: int = 30, **options: object) -> bytes:
    # Low quality: the re-encode (quality 80) is bigger, so the stripped original is stored
    # and what the stripper kept is what the test sees.
    return _save(photo(120, 90), "JPEG", quality=quality, **options)


def _gif(frames: int = 2, size: int = 10, **options: object) -> bytes:
    pictures = []
    for i in range(frames):
        im = Image.new("RGB", (size, size), (i * 60 % 256, 20, 90))
        ImageDraw.Draw(im).point((i % size, 0), fill=(255, 255, 0))
        pictures.append(im.convert("P"))
    return _save(
        pictures[0], "GIF", save_all=True, append_images=pictures[1:], duration=50, loop=0,
        **options,
    )  # fmt: skip


def _gif_descriptors(data: bytes) -> list[int]:
    """Offsets of the image descriptors of a GIF Pillow wrote."""
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    found = []
    while data[pos] != 0x3B:
        if data[pos] == 0x21:
            pos += 2
        else:
            found.append(pos)
            lflags = data[pos + 9]
            pos += 10 + (3 * 2 ** ((lflags & 7) + 1) if lflags & 0x80 else 0) + 1
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    return found


def _lzw_constant(pixels: int, min_size: int = 2) -> bytes:
    """GIF LZW data for ``pixels`` pixels of colour 0, as compact as LZW gets: after the table
    fills, every 12-bit code stands for ~4,000 pixels (98 MP in about 37 KB)."""
    clear = 1 << min_size
    codes = [(clear, min_size + 1)]
    width, next_code, code, length, left = min_size + 1, clear + 2, 0, 1, pixels
    while left > 0:
        if length > left:  # the entry that covers exactly what is left
            codes.append((0 if left == 1 else clear + left, width))
            break
        codes.append((code, width))
        left -= length
        if next_code < 4096:  # the entry just added is the next one emitted, one pixel longer
            code, length, next_code = next_code, length + 1, next_code + 1
            if next_code > (1 << width) and width < 12:
                width += 1
    codes.append((clear + 1, width))
    out, bits, count = bytearray(), 0, 0
    for value, size in codes:
        bits, count = bits | value << count, count + size
        while count >= 8:
            out.append(bits & 0xFF)
            bits, count = bits >> 8, count - 8
    if count:
        out.append(bits)
    return bytes(out)


def _gif_frame(x: int, y: int, width: int, height: int) -> bytes:
    data = _lzw_constant(width * height)
    blocks = b"".join(
        bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255)
    )
    return b"\x2c" + struct.pack("<HHHHB", x, y, width, height, 0) + b"\x02" + blocks + b"\0"


def gif_frame_bomb(width: int, height: int) -> bytes:
    """A 10x10 GIF whose second frame is ``width``x``height``, with all the LZW data that frame
    needs: a decoder that grows the canvas to fit (Pillow does) really decodes it."""
    head = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0x80, 0, 0) + b"\x10\x20\x30\xff\0\0"
    return head + _gif_frame(0, 0, 10, 10) + _gif_frame(0, 0, width, height) + b";"


def apng_frame_bomb() -> bytes:
    frames = [Image.new("RGB", (10, 10), (i * 80, 0, 0)) for i in range(2)]
    data = bytearray(_save(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    second = data.find(b"fcTL", data.find(b"fcTL") + 4)
    body = bytearray(data[second + 4 : second + 30])
    body[4:12] = struct.pack(">II", 14000, 7000)
    data[second + 4 : second + 30] = body
    data[second + 30 : second + 34] = struct.pack(">I", zlib.crc32(b"fcTL" + body))
    return bytes(data)


def webp_animation_bomb() -> bytes:
    """An animated 16x16 WebP whose second frame declares 14000x7000."""
    frames = [Image.new("RGB", (16, 16), (0, i * 80, 0)) for i in range(2)]
    data = bytearray(_save(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    second = data.find(b"ANMF", data.find(b"ANMF") + 4)
    data[second + 14 : second + 20] = (13999).to_bytes(3, "little") + (6999).to_bytes(3, "little")
    return bytes(data)


def webp_canvas_bomb() -> bytes:
    """An animated WebP whose canvas (VP8X) claims 10000x5000 for 16x16 frames: 2 frames."""
    frames = [Image.new("RGB", (16, 16), (0, 0, i * 80)) for i in range(2)]
    data = bytearray(_save(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    vp8x = data.find(b"VP8X")
    data[vp8x + 12 : vp8x + 18] = (9999).to_bytes(3, "little") + (4999).to_bytes(3, "little")
    return bytes(data)


def many_scans_jpeg(repeats: int = 2000) -> bytes:
    """A 1024x768 progressive JPEG whose smallest scan is repeated ``repeats`` times before EOI:
    every copy is one more pass over all the blocks."""
    smooth = Image.radial_gradient("L").resize((1024, 768)).convert("RGB")
    data = _save(smooth, "JPEG", quality=90, progressive=True)
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    ends = [*starts[1:], len(data) - 2]
    # Each scan runs to the next SOS (tables in between included) or to the EOI.
    scan = min((data[a:b] for a, b in zip(starts, ends, strict=True)), key=len)
    return data[:-2] + scan * repeats + b"\xff\xd9"


def truncated_jpeg_lying(width: int = 10000, height: int = 5000) -> bytes:
    """A 631-byte JPEG whose header claims ``width``x``height``, ended by an EOI: libjpeg fills
    everything after the few real bytes with grey."""
    data = _jpeg_set_size(_save(Image.new("L", (64, 64), 128), "JPEG", quality=50), width, height)
    sos = data.find(b"\xff\xda")
    head = data[: sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0] + 2]
    body = head + b"\x00" * max(0, 629 - len(head))
    return body[:629] + b"\xff\xd9"


def jpeg_cut_in_scan(progressive: bool = False, mode: str = "RGB") -> bytes:
    """A real photo cut at 60 % of its scan data, then given an EOI: more than enough bytes
    for the block count, yet the lower part is libjpeg's grey fill."""
    data = _save(photo(400, 300).convert(mode), "JPEG", quality=90, progressive=progressive)
    first = data.find(b"\xff\xda")
    return _cut_before(data, first + (len(data) - first) * 6 // 10)


def _cut_before(data: bytes, cut: int) -> bytes:
    """``data`` up to ``cut`` (never right after an 0xFF, which would make a marker), then EOI."""
    if data[cut - 1] == 0xFF:
        cut -= 1
    return data[:cut] + b"\xff\xd9"


def progressive_cut_in_ac_scan() -> bytes:
    """A progressive photo cut halfway through its last scan (an AC refinement), then given an
    EOI: every component's DC pass is complete, so the picture looks whole, only less sharp
    where the cut data was; an AC pass has no least size to check."""
    data = _save(photo(400, 300), "JPEG", quality=90, progressive=True)
    last = data.rfind(b"\xff\xda")
    start = last + 2 + struct.unpack(">H", data[last + 2 : last + 4])[0]
    return _cut_before(data, start + (len(data) - 2 - start) // 2)


def _bits_jpeg(bits: str) -> bytes:
    """Entropy-coded bytes: 0xFF stuffed, the last byte padded with 1s."""
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for i in range(0, len(bits), 8):
        out.append(int(bits[i : i + 8], 2))
        if out[-1] == 0xFF:
            out.append(0)
    return bytes(out)


def grey_fill_jpeg(width: int = 128, height: int = 128) -> bytes:
    """A grey baseline JPEG whose scan data stops after the upper half's blocks, then EOI, with
    Huffman tables chosen so that any bits after the cut decode to libjpeg's own fill, flat
    mid-grey blocks: every code of up to 15 bits means "no change" (DC) or "end of block" (AC),
    and the one 16-bit AC code (15 ones, a 0) carries the texture, 8-bit AC coefficients. A
    check that re-decodes with other bytes after the cut sees the same picture."""
    counts = bytes([1] * 16)  # one code of each length 1..16
    dc = _jpeg_segment(0xC4, b"\x00" + counts + bytes(16))  # all: DC difference 0
    ac = _jpeg_segment(0xC4, b"\x10" + counts + bytes(15) + b"\x08")  # EOB x15, then (0, 8)
    head = (
        b"\xff\xd8"
        + _jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))
        + _jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + dc
        + ac
        + _jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    )
    blocks = (width // 8) * (height // 8)
    bits = ""
    for i in range(blocks // 2):
        bits += "0"  # DC: no change
        for k in range(6):  # six AC coefficients, -255..-128 or 128..255
            value = 128 + (i * 37 + k * 53) % 128
            bits += "1" * 15 + "0" + format(value if (i + k) % 2 else 255 - value, "08b")
        bits += "0"  # end of block
    return head + _bits_jpeg(bits) + b"\xff\xd9"


def grey_corner_jpeg() -> bytes:
    """A legit picture whose last block is exactly mid-grey (what libjpeg fills a file that
    ends early with): it is complete, so it is stored."""
    img = photo(200, 150)
    img.paste((128, 128, 128), (150, 100, 200, 150))
    return _save(img, "JPEG", quality=30)


def _avif(size: tuple[int, int] = (640, 480)) -> bytes:
    return _save(photo(*size), "AVIF", quality=30, speed=10)


def avif_with_ispe(width: int, height: int) -> bytes:
    data = bytearray(_avif())
    at = data.find(b"ispe")
    data[at + 8 : at + 16] = struct.pack(">II", width, height)
    return bytes(data)


def avif_deep_boxes(depth: int = 5000) -> bytes:
    """An AVIF signature, then container boxes nested ``depth`` deep (a recursive walker's
    stack)."""
    ftyp = struct.pack(">I", 24) + b"ftypavif\0\0\0\0avifmif1"
    nested = b""
    for _ in range(depth):
        nested = struct.pack(">I", 8 + len(nested)) + b"iprp" + nested
    return ftyp + nested


def _webp_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def webp_with_junk() -> bytes:
    """A VP8X WebP with EXIF, XMP, an unknown chunk and a junk ICCP; all must go."""
    exif = Image.Exif()
    exif[0x010F] = PLANT.decode() + "webp-exif"
    data = _save(photo(80, 60), "WEBP", quality=40, exif=exif.tobytes(), xmp=PLANT + b"webp-xmp")
    riff = data[12:]
    extra = _webp_chunk(b"ZZZZ", PLANT + b"webp-unknown") + _webp_chunk(
        b"ICCP", PLANT + b"webp-icc" * 40
    )
    body = b"WEBP" + riff + extra
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_decompression_bomb(width: int, height: int) -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _png_chunk(b"IEND", b"")


def png_with_junk() -> bytes:
    """Text, compressed text, international text, time, a private chunk, a 900 KB iCCP of
    arbitrary bytes and one with a planted profile name; only pixels may survive."""
    meta = PngInfo()
    meta.add_text("Comment", PLANT.decode() + "png-text")
    meta.add_text("Author", PLANT.decode() + "png-ztxt", zip=True)
    meta.add_itxt("XML:com.adobe.xmp", PLANT.decode() + "png-itxt")
    data = _save(photo(160, 120), "PNG", pnginfo=meta, optimize=True)
    junk_icc = _png_chunk(b"iCCP", b"x\0\0" + zlib.compress(PLANT + os.urandom(900_000), 1))
    private = _png_chunk(b"prVt", PLANT + b"png-private")
    return _png_insert(data, junk_icc + private) + PLANT + b"png-after-iend"


def png_with_named_icc() -> bytes:
    """A real sRGB profile, but its iCCP name is planted text."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    name = PLANT + b"icc-name"
    chunk = _png_chunk(b"iCCP", name + b"\0\0" + zlib.compress(profile))
    return _png_insert(_save(photo(160, 120), "PNG", optimize=True), chunk)


def jpeg_with_junk() -> bytes:
    """Text in APP0 (a JFIF header with bytes after it and a JFXX), APP14 (an Adobe header with
    bytes after it), COM, APP1 (EXIF and XMP), APP2 (not ICC) and APP15."""
    exif = Image.Exif()
    exif[0x010F] = PLANT.decode() + "jpeg-exif"
    data = _small_jpeg(exif=exif.tobytes(), comment=PLANT + b"jpeg-com")
    jfif_long = b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0" + PLANT + b"jpeg-app0"
    jfxx = b"JFXX\0\x10" + PLANT + b"jpeg-jfxx"
    adobe_long = b"Adobe\0\x64\0\0\0\0\x01" + PLANT + b"jpeg-app14"
    segments = (
        _jpeg_segment(0xE0, jfif_long)
        + _jpeg_segment(0xE0, jfxx)
        + _jpeg_segment(0xEE, adobe_long)
        + _jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + PLANT + b"jpeg-xmp")
        + _jpeg_segment(0xE2, b"MPF\0" + PLANT + b"jpeg-app2")
        + _jpeg_segment(0xEF, PLANT + b"jpeg-app15")
        + _jpeg_segment(0xE2, b"ICC_PROFILE\0\x01\x01" + PLANT + b"jpeg-icc" * 30)
    )
    # Drop Pillow's own JFIF header so the planted one is the first APP0.
    app0_len = struct.unpack(">H", data[4:6])[0]
    return _jpeg_insert(data[:2] + data[4 + app0_len :], segments) + PLANT + b"jpeg-trailer"


def jpeg_between_scans() -> bytes:
    """A progressive JPEG with a COM and an APP1 segment between its scans."""
    data = _save(photo(120, 90), "JPEG", quality=30, progressive=True)
    second = data.find(b"\xff\xda", data.find(b"\xff\xda") + 2)
    junk = _jpeg_segment(0xFE, PLANT + b"scan-com") + _jpeg_segment(0xE1, PLANT + b"scan-app1")
    return data[:second] + junk + data[second:]


def gif_with_junk() -> bytes:
    """A comment, a plain-text extension, an XMP application block and a fake loop block."""
    data = _gif(3, 24, comment=PLANT + b"gif-comment")
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    text = PLANT + b"gif-plain-text"
    plain = b"\x21\x01\x0c" + b"\0" * 12 + bytes([len(text)]) + text + b"\0"
    xmp_payload = PLANT + b"gif-xmp"
    xmp = b"\x21\xff\x0bXMP DataXMP" + bytes([len(xmp_payload)]) + xmp_payload + b"\0"
    fake_loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\0\0" + bytes([9]) + PLANT[:8] + b"!" + b"\0"
    return data[:pos] + plain + xmp + fake_loop + data[pos:-1] + b";" + PLANT + b"gif-trailer"


def _noise(size: int) -> Image.Image:
    return Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))


@functools.cache
def corpus() -> tuple[Hostile, ...]:
    """Every hostile upload and its expected answer."""
    jpeg = _small_jpeg()
    png = _save(photo(64, 48), "PNG")
    gif = _gif(2, 32)
    webp = _save(photo(64, 48), "WEBP")
    sof = jpeg.find(b"\xff\xc0")
    arithmetic = jpeg[:sof] + b"\xff\xc9" + jpeg[sof + 2 :]
    idat = png.find(b"IDAT")
    idat_len = struct.unpack(">I", png[idat - 4 : idat])[0]
    short_idat = png[idat + 4 : idat + 4 + idat_len // 2]
    png_short_zlib = (
        png[: idat - 4] + _png_chunk(b"IDAT", short_idat) + _png_chunk(b"IEND", b"")
    )  # fmt: skip
    many = _gif(2, 1000)
    gce = many.rfind(b"\x21\xf9", 0, _gif_descriptors(many)[1])
    frames_bomb = many[:-1] + many[gce:-1] * 60 + b";"  # 61 frames of 1 MP
    return (
        # Frame bombs: later frames bigger than the canvas the header declares.
        Hostile("gif_frame_bomb", gif_frame_bomb(14000, 7000), 422, "outside"),
        Hostile("gif_frame_outside_canvas", gif_frame_bomb(3000, 3000), 422, "outside"),
        Hostile("apng_frame_bomb", apng_frame_bomb(), 422, "outside"),
        Hostile("webp_animation_bomb", webp_animation_bomb(), 422, "outside"),
        Hostile("webp_canvas_bomb", webp_canvas_bomb(), 422, "pixels"),
        Hostile("gif_pixels_over_frames", frames_bomb, 422, "pixels"),
        # Decoding work: scans, pixels, variants.
        Hostile("jpeg_many_scans", many_scans_jpeg(), 422, "scans"),
        Hostile("png_decompression_bomb", png_decompression_bomb(20000, 20000), 422, "side"),
        Hostile("png_pixel_bomb", png_decompression_bomb(9000, 9000), 422, "pixels"),
        Hostile("jpeg_arithmetic", arithmetic, 415, "variant"),
        # Truncated files with lying headers.
        Hostile("jpeg_truncated_lying", truncated_jpeg_lying(), 422, "ends early"),
        Hostile("jpeg_truncated_small", truncated_jpeg_lying(1200, 900), 422, "ends early"),
        Hostile("jpeg_no_eoi", jpeg[: len(jpeg) // 2], 422, "ends early"),
        Hostile("jpeg_cut_in_scan", jpeg_cut_in_scan(), 422, "ends early"),
        Hostile("jpeg_cmyk_cut_in_scan", jpeg_cut_in_scan(mode="CMYK"), 422, "ends early"),
        Hostile("jpeg_progressive_cut_in_ac_scan", progressive_cut_in_ac_scan(), 422, "ends early"),
        Hostile("jpeg_grey_fill_tables", grey_fill_jpeg(), 422, "ends early"),
        Hostile("jpeg_grey_corner", grey_corner_jpeg(), 201),
        Hostile("png_no_iend", png[: len(png) // 2], 422, "ends early"),
        Hostile("png_short_zlib", png_short_zlib, 422, "corrupt"),
        Hostile("gif_no_trailer", gif[: len(gif) - 8], 422, "ends early"),
        Hostile("webp_short", webp[: len(webp) // 2], 422, "ends early"),
        Hostile("avif_ispe_smaller", avif_with_ispe(64, 48), 422, "AV1"),
        Hostile("avif_deep_boxes", avif_deep_boxes(), 422, "corrupt"),
        Hostile("avif_ispe_bigger", avif_with_ispe(10000, 9000), 422, "pixels"),
        # Zero and nothing.
        Hostile("empty", b"", 400, "empty", unit_status=415),
        Hostile("png_zero_size", png_decompression_bomb(0, 0), 422, "no pixels"),
        Hostile("gif_zero_size", b"GIF89a\0\0\0\0\0\0\0;", 422, ""),
        Hostile("jpeg_header_only", b"\xff\xd8\xff\xd9", 422, ""),
        # Odd but acceptable: stored, with everything planted gone.
        Hostile("jpeg_text_segments", jpeg_with_junk(), 201),
        Hostile("jpeg_text_between_scans", jpeg_between_scans(), 201),
        Hostile("png_text_and_giant_iccp", png_with_junk(), 201, max_bytes=200_000),
        Hostile("png_icc_name", png_with_named_icc(), 201),
        Hostile("gif_text_extensions", gif_with_junk(), 201),
        Hostile("webp_junk_chunks", webp_with_junk(), 201),
        Hostile("jpeg_polyglot_zip", jpeg + b"PK\x03\x04" + PLANT + b"zip", 201),
        Hostile("png_polyglot_html", png + b"<html>" + PLANT + b"html", 201),
        Hostile("webp_polyglot", webp + PLANT + b"after-riff", 201),
        Hostile("noise_png", _save(_noise(64), "PNG"), 201),
    )
