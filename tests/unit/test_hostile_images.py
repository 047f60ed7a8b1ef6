"""Every hostile upload of the corpus, through process_image in this process (no worker, no
memory ceiling): the expected rejection, or a stored file with nothing planted left in it."""

from __future__ import annotations

import io
import time
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from imagegate.uploader import process
from imagegate.uploader.process import Budget, ImageRejected, Limits, Quality, process_image
from imagegate.uploader.strip import strip_gif, strip_jpeg, strip_png, strip_webp
from tests.support import hostile, images

LIMITS = Limits(max_pixels=50_000_000, max_side=10_000, max_frames=900, max_scans=100)
QUALITY = Quality(jpeg=80, webp=79, avif=63)
CORPUS = {entry.name: entry for entry in hostile.corpus()}


def test_the_corpus_is_generated_quickly() -> None:
    hostile.corpus.cache_clear()
    start = time.process_time()
    hostile.corpus()
    assert time.process_time() - start < 5


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_image(tmp_path: Path, name: str) -> None:
    entry = CORPUS[name]
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(entry.data)
    expected = entry.unit_status or entry.status
    if expected != 201:
        with pytest.raises(ImageRejected) as info:
            process_image(str(src), str(dst), LIMITS, QUALITY)
        assert info.value.status == expected, info.value.message
        if entry.unit_status is None:
            assert entry.error in info.value.message
        assert not dst.exists()
        return
    result = process_image(str(src), str(dst), LIMITS, QUALITY)
    out = dst.read_bytes()
    assert hostile.PLANT not in out
    assert len(out) == result.bytes <= len(entry.data)
    if entry.max_bytes is not None:
        assert result.bytes <= entry.max_bytes
    stored = Image.open(io.BytesIO(out))
    stored.load()
    assert stored.size == (result.width, result.height)


@pytest.mark.parametrize(
    ("name", "strip"),
    [
        ("jpeg_text_segments", strip_jpeg),
        ("jpeg_text_between_scans", strip_jpeg),
        ("jpeg_polyglot_zip", strip_jpeg),
        ("png_text_and_giant_iccp", strip_png),
        ("png_icc_name", strip_png),
        ("png_polyglot_html", strip_png),
        ("gif_text_extensions", strip_gif),
        ("webp_junk_chunks", strip_webp),
        ("webp_polyglot", strip_webp),
    ],
)
def test_strippers_leave_nothing_planted(name: str, strip: object) -> None:
    """Whichever file wins (stripped original or re-encode), the stripper's output is clean and
    decodes to the same picture."""
    data = CORPUS[name].data
    out = strip(data)  # type: ignore[operator]
    assert out is not None
    assert hostile.PLANT not in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the planted APP2 looks like a broken MPO index
        original = Image.open(io.BytesIO(data))
        original.load()
    stripped = Image.open(io.BytesIO(out))
    assert stripped.size == original.size
    assert getattr(stripped, "n_frames", 1) == getattr(original, "n_frames", 1)
    assert stripped.convert("RGBA").tobytes() == original.convert("RGBA").tobytes()


@pytest.mark.parametrize(
    "name", ["jpeg_cmyk_cut_in_scan", "jpeg_progressive_cut_in_ac_scan", "jpeg_grey_fill_tables"]
)
def test_pillow_alone_decodes_jpegs_that_end_early(name: str) -> None:
    """Why the strict decode: Pillow fills in what is missing and reports nothing."""
    img = Image.open(io.BytesIO(CORPUS[name].data))
    img.load()
    if name == "jpeg_grey_fill_tables":  # the fill is the flat grey of a picture's own block
        corner = img.crop((img.width - 8, img.height - 8, img.width, img.height))
        assert corner.getextrema() == (128, 128)


@pytest.mark.parametrize("cache", [0, 4], ids=["fresh-memory", "kept-buffer"])
@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("RGB", {"subsampling": "4:2:0"}),
        ("RGB", {"subsampling": "4:4:4"}),
        ("RGB", {"subsampling": "4:2:0", "progressive": True}),
        ("RGB", {"subsampling": "4:4:4", "progressive": True}),
        ("L", {}),
        ("L", {"progressive": True}),
        ("CMYK", {}),
    ],
)
def test_strict_decode_gives_pillows_pixels(
    mode: str, options: dict[str, object], cache: int
) -> None:
    """The strict decoder's bitmap is the one Pillow's own decode gives, byte for byte (same
    integer DCT, same upsampling), with the header's info (EXIF orientation) kept; also when
    its output buffer is kept (a block cache) and last held a bigger, different picture."""
    exif = Image.Exif()
    exif[images.ORIENTATION] = 6
    picture = images.photo(333, 211, seed=3).convert(mode)
    data = images.encode(picture, "JPEG", quality=90, exif=exif.tobytes(), **options)
    pillow = Image.open(io.BytesIO(data))
    pillow.load()
    saved = Image.core.get_blocks_max()
    Image.core.set_blocks_max(cache)  # the buffer is kept up to the block cache's size
    try:
        bigger = images.encode(images.photo(400, 300, seed=9), "JPEG", quality=90)
        process._decode_jpeg(Image.open(io.BytesIO(bigger)), bigger)
        strict = process._decode_jpeg(Image.open(io.BytesIO(data)), data)
    finally:
        Image.core.set_blocks_max(saved)
    if cache:  # the bigger picture's buffer was kept, and used
        assert len(process._decode_buffer) >= 400 * 300 * 3
    # A colour picture comes as RGBX: Pillow's own four-byte layout, a view of the decoded
    # buffer rather than a copy; its RGB bytes are Pillow's.
    assert strict.mode == {"RGB": "RGBX"}.get(pillow.mode, pillow.mode)
    assert strict.size == pillow.size
    assert strict.convert(pillow.mode).tobytes() == pillow.tobytes()
    assert strict.info == pillow.info
    assert strict.getexif()[images.ORIENTATION] == 6


def test_cpu_budget_rejects_slow_work(tmp_path: Path) -> None:
    """A budget far below what the image needs: the alarm stops it with a clean 422."""
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(images.encode(images.photo(1500, 1000), "PNG"))  # ~0.3 s of CPU
    tiny = Budget(seconds_per_megapixel=0.0, min_seconds=0.001, max_seconds=0.001)
    with pytest.raises(ImageRejected) as info:
        process_image(str(src), str(dst), LIMITS, QUALITY, tiny)
    assert info.value.status == 422
    assert "longer than" in info.value.message
    assert not dst.exists()


def test_the_container_walk_is_under_the_budget_too(tmp_path: Path) -> None:
    """200,000 empty private chunks: cheap to send, slow to walk; the alarm covers the walk."""
    png = images.encode(images.photo(16, 16), "PNG")
    chunk = b"\0\0\0\0prVt" + zlib.crc32(b"prVt").to_bytes(4, "big")
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(png[:33] + chunk * 200_000 + png[33:])
    tiny = Budget(seconds_per_megapixel=1.0, min_seconds=0.01, max_seconds=60)
    with pytest.raises(ImageRejected) as info:
        process_image(str(src), str(dst), LIMITS, QUALITY, tiny)
    assert "longer than 0.01 s" in info.value.message
    # Without the alarm the same file is stored, its chunks stripped.
    result = process_image(str(src), str(dst), LIMITS, QUALITY)
    assert result.bytes < 10_000
