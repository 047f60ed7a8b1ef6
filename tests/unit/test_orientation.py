"""EXIF orientation, all eight values: the stored image must look the way the camera meant it.

Sizes alone cannot tell rotating left from rotating right, or a 180° turn from none; so each
test picture has four differently coloured quadrants, and the output is checked pixel by pixel.
The stored (raw) pixels are derived from the EXIF definition of each value (where the stored
0th row and 0th column go), not from Pillow's ``exif_transpose``, which the code under test uses.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from imagegate.uploader.process import Limits, Quality, process_image
from tests.support import images

LIMITS = Limits(max_pixels=50_000_000, max_side=10_000, max_frames=900)
QUALITY = Quality(jpeg=80, webp=79, avif=63)

# The upright picture: quadrants 48 by 32, aligned on JPEG blocks so colours stay clean.
W, H = 96, 64
TOP_LEFT, TOP_RIGHT = (230, 20, 20), (20, 200, 20)
BOTTOM_LEFT, BOTTOM_RIGHT = (20, 20, 230), (240, 240, 240)

# EXIF 2.3, tag 0x0112: stored pixel (x, y) of a w-by-h image → where it is displayed.
Mapping = Callable[[int, int, int, int], tuple[int, int]]
DISPLAY: dict[int, Mapping] = {
    1: lambda x, y, w, h: (x, y),  # 0th row top, 0th column left
    2: lambda x, y, w, h: (w - 1 - x, y),  # top, right: mirrored
    3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),  # bottom, right: 180°
    4: lambda x, y, w, h: (x, h - 1 - y),  # bottom, left: flipped
    5: lambda x, y, w, h: (y, x),  # 0th row left, 0th column top
    6: lambda x, y, w, h: (h - 1 - y, x),  # right, top: turn 90° clockwise
    7: lambda x, y, w, h: (h - 1 - y, w - 1 - x),  # right, bottom
    8: lambda x, y, w, h: (y, w - 1 - x),  # left, bottom: turn 90° counter-clockwise
}


def upright() -> Image.Image:
    img = Image.new("RGB", (W, H))
    img.paste(TOP_LEFT, (0, 0, W // 2, H // 2))
    img.paste(TOP_RIGHT, (W // 2, 0, W, H // 2))
    img.paste(BOTTOM_LEFT, (0, H // 2, W // 2, H))
    img.paste(BOTTOM_RIGHT, (W // 2, H // 2, W, H))
    return img


def stored_for(orientation: int) -> bytes:
    """The JPEG a camera would write: raw pixels that display as ``upright()`` under the tag."""
    want = upright()
    w, h = (W, H) if orientation <= 4 else (H, W)
    raw = Image.new("RGB", (w, h))
    src, dst = want.load(), raw.load()
    assert src is not None and dst is not None
    for y in range(h):
        for x in range(w):
            dst[x, y] = src[DISPLAY[orientation](x, y, w, h)]
    exif = Image.Exif()
    exif[images.ORIENTATION] = orientation
    return images.encode(raw, "JPEG", quality=95, exif=exif.tobytes())


def close(got: tuple[int, ...], want: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 40 for a, b in zip(got[:3], want, strict=True))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_is_displayed_upright(tmp_path: Path, orientation: int) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    data = stored_for(orientation)
    src.write_bytes(data)
    raw = Image.open(io.BytesIO(data))
    assert raw.getexif()[images.ORIENTATION] == orientation
    if orientation > 1:  # the input really is not upright, so the check below can fail
        top_left = raw.convert("RGB").getpixel((W // 4, H // 4))
        assert raw.size != (W, H) or not close(top_left, TOP_LEFT)  # type: ignore[arg-type]

    result = process_image(str(src), str(dst), LIMITS, QUALITY)

    assert (result.width, result.height) == (W, H)
    out = Image.open(dst)
    assert out.size == (W, H)
    assert out.getexif().get(images.ORIENTATION, 1) == 1  # nobody may rotate it again
    rgb = out.convert("RGB")
    for (x, y), colour in {
        (W // 4, H // 4): TOP_LEFT,
        (3 * W // 4, H // 4): TOP_RIGHT,
        (W // 4, 3 * H // 4): BOTTOM_LEFT,
        (3 * W // 4, 3 * H // 4): BOTTOM_RIGHT,
    }.items():
        got = rgb.getpixel((x, y))
        assert isinstance(got, tuple)
        assert close(got, colour), (orientation, (x, y), got, colour)
