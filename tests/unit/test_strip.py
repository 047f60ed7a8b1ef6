"""Lossless metadata stripping keeps pixels and drops metadata and trailing payloads."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops

from imagegate.uploader.strip import strip_gif, strip_jpeg, strip_png, strip_webp
from tests.support import images


def same_pixels(a: bytes, b: bytes) -> bool:
    ia, ib = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    return ImageChops.difference(ia.convert("RGBA"), ib.convert("RGBA")).getbbox() is None


def test_jpeg_loses_exif_comment_and_trailer_keeps_pixels() -> None:
    data = images.jpeg(200, 100, gps=True, comment=b"hidden note") + b"PK\x03\x04 zip payload"
    out = strip_jpeg(data)
    assert out is not None
    assert b"TestCam" not in out and b"hidden note" not in out and b"zip payload" not in out
    assert not Image.open(io.BytesIO(out)).getexif()
    assert same_pixels(data, out)


def test_jpeg_keeps_a_real_icc_profile() -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = images.encode(images.photo(64, 64), "JPEG", icc_profile=profile)
    out = strip_jpeg(data)
    assert out is not None
    assert Image.open(io.BytesIO(out)).info.get("icc_profile") == profile


def test_jpeg_drops_an_icc_profile_that_is_not_one() -> None:
    # 'acsp' in the wrong place and a size field of 0: the allow-list wants a parsable profile.
    profile = b"\0" * 128 + b"acsp" + b"planted icc text" * 20
    data = images.encode(images.photo(64, 64), "JPEG", icc_profile=profile)
    out = strip_jpeg(data)
    assert out is not None
    assert b"planted icc text" not in out
    assert "icc_profile" not in Image.open(io.BytesIO(out)).info
    assert same_pixels(data, out)


def test_png_loses_text_chunks_and_trailer() -> None:
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("Author", "secret author")
    meta.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>gps</x:xmpmeta>")
    data = images.encode(images.photo(80, 60), "PNG", pnginfo=meta) + b"trailing junk"
    out = strip_png(data)
    assert out is not None
    assert b"secret author" not in out and b"xmpmeta" not in out and b"trailing junk" not in out
    assert same_pixels(data, out)


def test_webp_loses_exif_and_xmp() -> None:
    exif = Image.Exif()
    exif[0x010F] = "WebpCam"
    data = images.encode(images.photo(80, 60), "WEBP", exif=exif.tobytes(), xmp=b"<xmp>where</xmp>")
    out = strip_webp(data)
    assert out is not None
    assert b"WebpCam" not in out and b"<xmp>" not in out
    img = Image.open(io.BytesIO(out))
    assert "exif" not in img.info and "xmp" not in img.info
    assert same_pixels(data, out)


def test_gif_loses_comments_keeps_animation() -> None:
    data = images.animated("GIF", frames=3, durations=[30, 40, 50], comment=b"gif secret")
    assert b"gif secret" in data
    out = strip_gif(data)
    assert out is not None
    assert b"gif secret" not in out
    img = Image.open(io.BytesIO(out))
    assert img.n_frames == 3
    assert img.info["loop"] == 0


@pytest.mark.parametrize("fn", [strip_jpeg, strip_png, strip_webp, strip_gif])
@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\xff\xd8",
        b"\x89PNG\r\n\x1a\n\0\0",
        b"RIFF\xff\xff\xff\xffWEBP",
        b"GIF89a\x01\x00\x01\x00\x80",
    ],
)
def test_strippers_give_up_cleanly_on_damaged_input(fn: object, junk: bytes) -> None:
    assert fn(junk) is None  # type: ignore[operator]
