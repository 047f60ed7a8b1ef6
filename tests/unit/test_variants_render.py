"""Variants (variants/): presets and sizes, pictures against Pillow's own resizing, colour
management, alpha, animation, JPEG DCT scaling and its memory, failures that leave nothing, and
a run through a real codec pool (the arguments and results cross a process boundary)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageCms
from PIL import _imaging as pillow_core

from imagegate.errors import AppError
from imagegate.uploader.process import ImageRejected, Limits, Quality
from imagegate.variants import (
    DEFAULT_PRESETS,
    MAX_SIDE,
    VARIANT_FORMATS,
    Preset,
    Rendered,
    Size,
    VariantJob,
    output_size,
    parse_presets,
    render_variants,
)
from imagegate.variants.presets import format_presets
from imagegate.variants.render import AVIF_SPEED, AVIF_STILL
from tests.support import colour, images

QUALITY = Quality(jpeg=80, webp=79, avif=63)
LIMITS = Limits(max_pixels=50_000_000, max_side=10_000, max_frames=900)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
ALL_FORMATS = ("png", "jpg", "webp", "avif", "gif")
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
}


def noisy_photo(width: int, height: int, seed: int = 1) -> Image.Image:
    """A photo-like picture: gradients and edges, plus sensor-like noise."""
    base = np.asarray(images.photo(width, height, seed), dtype=np.int16)
    noise = np.random.default_rng(seed).normal(0, 6, base.shape).astype(np.int16)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def render(
    tmp_path: Path, data: bytes, *jobs: VariantJob, budget: float = 0.0, token: str | None = None
) -> list[Rendered]:
    src = tmp_path / "original"
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return render_variants(str(src), str(out), jobs, QUALITY, budget, token)


def job(
    key: str = "v",
    width: int = 320,
    height: int = 320,
    fit: str = "cover",
    formats: tuple[str, ...] = ("png",),
) -> VariantJob:
    return VariantJob(key, Size(width, height, fit), formats)  # type: ignore[arg-type]


def opened(result: Rendered) -> Image.Image:
    with Image.open(result.path) as img:
        img.load()
        return img


def by_format(results: list[Rendered]) -> dict[str, Rendered]:
    return {r.fmt: r for r in results}


# --- presets ---------------------------------------------------------------------------------


def test_parse_presets_reads_the_setting() -> None:
    presets = parse_presets(" thumb=320x320:cover, small=640x480 ,huge=4096x1:contain")
    assert presets == (
        Preset("thumb", Size(320, 320, "cover")),
        Preset("small", Size(640, 480, "contain")),  # contain unless told
        Preset("huge", Size(MAX_SIDE, 1, "contain")),
    )
    assert parse_presets(format_presets(DEFAULT_PRESETS)) == DEFAULT_PRESETS
    assert [(p.name, str(p.size)) for p in DEFAULT_PRESETS] == [
        ("thumb", "320x320:cover"),
        ("small", "640x640:contain"),
        ("medium", "1280x1280:contain"),
        ("large", "2048x2048:contain"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no presets given"),
        ("thumb", "'thumb' is not name=WIDTHxHEIGHT"),
        ("thumb=320", "is not name=WIDTHxHEIGHT"),
        ("thumb=-3x5", "is not name=WIDTHxHEIGHT"),
        ("Thumb=1x1", "preset name 'Thumb' must be a lower-case letter"),
        ("1st=1x1", "preset name '1st'"),
        ("t_b=1x1", "preset name 't_b'"),
        ("abcdefghijklmnopq=1x1", "preset name 'abcdefghijklmnopq'"),  # 17 characters
        ("a=0x10", "preset 'a': sides must be 1 to 4096 pixels"),
        ("a=10x4097", "preset 'a': sides must be 1 to 4096 pixels"),
        ("a=1x1:fill", "preset 'a': fit must be cover or contain, not 'fill'"),
        ("a=1x1,a=2x2", "preset 'a' is given twice"),
        ("a=1x1,,b=2x2", "empty preset"),
    ],
)
def test_parse_presets_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_presets(text)


@pytest.mark.parametrize(
    ("src", "size", "expected"),
    [
        ((4000, 3000), Size(320, 320, "cover"), (320, 320)),
        ((4000, 3000), Size(640, 640, "contain"), (640, 480)),
        ((3000, 4000), Size(640, 640, "contain"), (480, 640)),
        ((4000, 1000), Size(1280, 1280, "contain"), (1280, 320)),
        ((1000, 3), Size(640, 640, "contain"), (640, 2)),
        ((3000, 1), Size(640, 640, "contain"), (640, 1)),  # never 0 pixels
        # never upscaled: at most the original
        ((100, 80), Size(640, 640, "contain"), (100, 80)),
        ((640, 640), Size(640, 640, "contain"), (640, 640)),
        # cover on a small original: the largest crop of the box's shape that fits it
        ((200, 100), Size(320, 320, "cover"), (100, 100)),
        ((300, 400), Size(320, 240, "cover"), (300, 225)),
        ((1000, 100), Size(320, 320, "cover"), (100, 100)),
        ((400, 300), Size(320, 240, "cover"), (320, 240)),
        ((330, 200), Size(320, 240, "cover"), (267, 200)),
    ],
)
def test_output_size(src: tuple[int, int], size: Size, expected: tuple[int, int]) -> None:
    assert output_size(*src, size) == expected


def test_variant_formats_are_avif_webp_and_the_originals_own() -> None:
    assert VARIANT_FORMATS == {
        "jpg": ("avif", "webp", "jpg"),
        "png": ("avif", "webp", "png"),
        "gif": ("avif", "webp", "gif"),
        "webp": ("avif", "webp"),
        "avif": ("avif", "webp"),
    }


def test_jobs_and_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"variant key '\.\./x'"):
        job("../x")
    with pytest.raises(ValueError, match="unknown format 'bmp'"):
        job(formats=("bmp",))
    with pytest.raises(ValueError, match="formats must be given once each"):
        job(formats=("png", "png"))
    with pytest.raises(ValueError, match="a side must be"):
        Size(0, 10, "cover")
    with pytest.raises(ValueError, match="fit must be cover or contain"):
        Size(10, 10, "stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant keys must differ"):
        render_variants("x", "y", [job("a"), job("a")], QUALITY, 0)


# --- pictures ------------------------------------------------------------------------------


def test_variants_match_pillow_resizing_the_full_picture(tmp_path: Path) -> None:
    """Every default preset of a 2400x1800 JPEG, against Pillow's Lanczos on the full decode
    (no DCT scaling), the crop box worked out here; lossless PNG isolates the resizing."""
    data = images.encode(noisy_photo(2400, 1800), "JPEG", quality=92)
    jobs = [
        VariantJob(
            p.name, p.size, ("png", "jpg", "webp", "avif") if p.name == "thumb" else ("png",)
        )
        for p in DEFAULT_PRESETS
    ]
    results = render(tmp_path, data, *jobs)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    boxes = {
        "thumb": ((320, 320), (300, 0, 2100, 1800)),  # the centred 1800x1800 square
        "small": ((640, 480), None),
        "medium": ((1280, 960), None),
        "large": ((2048, 1536), None),
    }
    assert [(r.key, r.fmt) for r in results] == [
        ("thumb", "png"),
        ("thumb", "jpg"),
        ("thumb", "webp"),
        ("thumb", "avif"),
        ("small", "png"),
        ("medium", "png"),
        ("large", "png"),
    ]
    for result in results:
        size, box = boxes[result.key]
        reference = full.resize(size, Image.Resampling.LANCZOS, box=box)
        got = opened(result)
        body = Path(result.path).read_bytes()
        assert (result.width, result.height) == got.size == size
        assert result.bytes == len(body)
        assert result.sha256 == hashlib.sha256(body).hexdigest()
        assert result.content_type == CONTENT_TYPES[result.fmt]
        token, key, ext = Path(result.path).name.split(".")
        assert (key, ext, len(token)) == (result.key, result.fmt, 16)
        if result.fmt == "png":
            assert colour.ssim(got, reference) >= 0.97, result
            assert colour.psnr(got, reference) >= 35, result
        else:  # lossy: the same picture, give or take the codec
            assert colour.ssim(got, reference) >= 0.9, result


def test_cover_crops_the_centre_and_contain_keeps_everything(tmp_path: Path) -> None:
    red, green, blue = (220, 0, 0), (0, 200, 0), (0, 0, 220)
    wide = Image.new("RGB", (400, 200), green)
    wide.paste(red, (0, 0, 100, 200))
    wide.paste(blue, (300, 0, 400, 200))
    thumb, whole = render(
        tmp_path,
        images.encode(wide, "PNG"),
        job("thumb", 100, 100, "cover"),
        job("whole", 200, 200, "contain"),
    )
    cover = np.asarray(opened(thumb), dtype=int)
    assert cover.shape == (100, 100, 3)
    # The centred 200x200 square is all green (Lanczos may lean on a neighbour at the edge).
    assert np.abs(cover[:, 2:-2] - green).max() <= 3
    contain = opened(whole)
    assert contain.size == (200, 100)
    for x, expected in ((10, red), (100, green), (190, blue)):
        assert np.abs(np.subtract(contain.getpixel((x, 50)), expected)).max() <= 3

    tall = wide.transpose(Image.Transpose.ROTATE_90)  # 200x400: blue, green, red from the top
    (thumb,) = render(tmp_path, images.encode(tall, "PNG"), job("tall", 50, 100, "cover"))
    band = np.asarray(opened(thumb), dtype=int)
    assert band.shape == (100, 50, 3)  # 1:2 box on a 1:2 picture: all of it
    assert np.abs(band[5, 25] - blue).max() <= 3
    assert np.abs(band[50, 25] - green).max() <= 3
    assert np.abs(band[95, 25] - red).max() <= 3


def test_small_originals_are_never_upscaled(tmp_path: Path) -> None:
    original = noisy_photo(100, 80)
    results = render(
        tmp_path,
        images.encode(original, "PNG"),
        *(VariantJob(p.name, p.size, ("png",)) for p in DEFAULT_PRESETS),
    )
    assert [(r.key, r.width, r.height) for r in results] == [
        ("thumb", 80, 80),
        ("small", 100, 80),
        ("medium", 100, 80),
        ("large", 100, 80),
    ]
    # Same size: the pixels are the original's, not resampled.
    assert np.array_equal(np.asarray(opened(results[1])), np.asarray(original))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    (result,) = render(
        tmp_path, images.jpeg(200, 100, orientation=6), job("v", 400, 400, "contain")
    )
    assert opened(result).size == (100, 200) == (result.width, result.height)


def test_avif_and_webp_thumbs_are_smaller_than_the_jpeg(tmp_path: Path) -> None:
    data = images.encode(noisy_photo(1600, 1200), "JPEG", quality=92)
    sizes = {
        r.fmt: r.bytes
        for r in render(tmp_path, data, job("thumb", formats=("avif", "webp", "jpg")))
    }
    assert sizes["avif"] < sizes["jpg"], sizes
    assert sizes["webp"] < sizes["jpg"], sizes


# --- colour ---------------------------------------------------------------------------------

# Saturated colours, where Display P3 and sRGB differ most; all inside sRGB once converted.
P3_PATCHES = [(200, 60, 50), (70, 190, 80), (60, 80, 210), (230, 200, 60)]


def p3_picture() -> Image.Image:
    img = Image.new("RGB", (256, 64))
    for i, patch in enumerate(P3_PATCHES):
        img.paste(patch, (64 * i, 0, 64 * i + 64, 64))
    return img


def test_the_display_p3_test_profile_is_a_valid_profile() -> None:
    """LittleCMS reads it, and converts with it as the matrices say."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(colour.display_p3_profile()))
    assert profile.profile.profile_description == "Display P3 (test)"
    assert profile.profile.xcolor_space == "RGB "
    pixels = np.array([P3_PATCHES], dtype=np.uint8)
    converted = ImageCms.profileToProfile(Image.fromarray(pixels), profile, SRGB)
    assert converted is not None
    by_lcms = np.asarray(converted, dtype=float)
    assert colour.delta_e76(by_lcms, colour.p3_to_srgb(pixels)).max() < 1.0


@pytest.mark.parametrize("original", ["PNG", "JPEG"])
def test_display_p3_becomes_srgb(tmp_path: Path, original: str) -> None:
    p3 = colour.display_p3_profile()
    picture = p3_picture()
    options: dict[str, Any] = {"icc_profile": p3}
    if original == "JPEG":
        options.update(quality=95, subsampling=0)
    results = render(
        tmp_path,
        images.encode(picture, original, **options),
        job("v", 128, 128, "contain", ("png", "jpg", "webp", "avif")),
    )
    # The reference: ImageCms on the original's pixels (as decoded), then the same resize.
    source = Image.open(io.BytesIO(images.encode(picture, original, **options))).convert("RGB")
    converted = ImageCms.profileToProfile(
        source,
        ImageCms.ImageCmsProfile(io.BytesIO(p3)),
        SRGB,
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
    )
    assert converted is not None
    reference = np.asarray(converted.resize((128, 32), Image.Resampling.LANCZOS), dtype=float)
    untouched = np.asarray(source.resize((128, 32), Image.Resampling.LANCZOS), dtype=float)
    centres = (slice(12, 20), [16, 48, 80, 112])  # the middle of each patch
    for result in results:
        got = opened(result)
        assert "icc_profile" not in got.info, result.fmt  # untagged: sRGB by convention
        pixels = np.asarray(got.convert("RGB"), dtype=float)
        error = colour.delta_e76(pixels[centres], reference[centres])
        assert error.max() <= 2.0, (result.fmt, error)
    # Not converting would have been seen: every patch moves by more than the tolerance.
    assert colour.delta_e76(untouched[centres], reference[centres]).min() > 3.0


def broken_profile() -> bytes:
    """The right shape (size, signature, tag table) but colorant tags of an unknown type."""
    profile = colour.display_p3_profile()
    return profile[:128] + profile[128:].replace(b"XYZ ", b"zzzz")


@pytest.mark.parametrize(
    "profile",
    [b"not a profile at all", broken_profile(), b"\0" * 200],
    ids=["junk", "unknown-tag-type", "zeros"],
)
def test_an_unusable_profile_is_taken_as_srgb(tmp_path: Path, profile: bytes) -> None:
    picture = p3_picture()
    (result,) = render(
        tmp_path, images.encode(picture, "PNG", icc_profile=profile), job("v", 256, 64, "contain")
    )
    assert np.array_equal(np.asarray(opened(result)), np.asarray(picture))


def test_an_untagged_picture_keeps_its_colours(tmp_path: Path) -> None:
    picture = p3_picture()
    (result,) = render(tmp_path, images.encode(picture, "PNG"), job("v", 256, 64, "contain"))
    assert np.array_equal(np.asarray(opened(result)), np.asarray(picture))


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # red
    results = render(tmp_path, images.encode(cmyk, "JPEG"), job("v", 32, 32, "cover", ALL_FORMATS))
    for result in results:
        got = opened(result).convert("RGB")
        assert got.size == (32, 32)
        r, g, b = got.getpixel((16, 16))  # type: ignore[misc]
        assert r > 200 and g < 40 and b < 40, (result.fmt, (r, g, b))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = Image.new("I;16", (32, 32), 40000)
    (result,) = render(tmp_path, images.encode(grey, "PNG"), job("v", 32, 32, "contain"))
    assert opened(result).getpixel((5, 5)) == 40000 >> 8


# --- alpha -----------------------------------------------------------------------------------


def half_transparent(mode: str = "RGBA") -> Image.Image:
    """Left half opaque red, right half fully transparent blue (the blue must not show)."""
    img = Image.new("RGBA", (128, 128), (0, 0, 255, 0))
    img.paste((255, 0, 0, 255), (0, 0, 64, 128))
    return img if mode == "RGBA" else img.convert(mode)


@pytest.mark.parametrize(
    ("original", "options"),
    [
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("GIF", {}),  # a palette with a transparent index
    ],
)
def test_alpha_is_kept_and_flattened_on_white_in_jpeg(
    tmp_path: Path, original: str, options: dict[str, Any]
) -> None:
    picture = half_transparent()
    if original == "GIF":
        picture = Image.new("P", (128, 128), 1)
        picture.putpalette([255, 0, 0, 0, 0, 255])
        picture.paste(0, (0, 0, 64, 128))
        picture.info["transparency"] = 1  # the blue half
    results = by_format(
        render(
            tmp_path,
            images.encode(picture, original, **options),
            job("v", 64, 64, "contain", ALL_FORMATS),
        )
    )
    for fmt in ("png", "webp", "avif", "gif"):
        got = opened(results[fmt]).convert("RGBA")
        assert got.size == (64, 64)
        r, g, b, a = got.getpixel((10, 32))  # type: ignore[misc]
        assert a >= 250 and r >= 240 and g <= 20 and b <= 20, (fmt, (r, g, b, a))
        assert got.getpixel((54, 32))[3] <= 5, fmt  # type: ignore[index]
    jpeg = opened(results["jpg"])
    assert jpeg.mode == "RGB"
    assert min(jpeg.getpixel((54, 32))) >= 245  # type: ignore[type-var]  # white, not blue
    r, g, b = jpeg.getpixel((10, 32))  # type: ignore[misc]
    assert r >= 230 and g <= 30 and b <= 30


def test_grey_with_alpha_keeps_its_alpha(tmp_path: Path) -> None:
    picture = half_transparent("LA")
    results = by_format(
        render(tmp_path, images.encode(picture, "PNG"), job("v", 64, 64, "contain", ALL_FORMATS))
    )
    assert opened(results["png"]).mode == "LA"
    assert opened(results["webp"]).getpixel((54, 32))[3] <= 5  # type: ignore[index]
    assert opened(results["jpg"]).getpixel((54, 32)) >= 245  # type: ignore[operator]


# --- animation -------------------------------------------------------------------------------


def frames_of(data: bytes) -> list[tuple[int, float]]:
    """Each frame's duration and its mean red."""
    with Image.open(io.BytesIO(data)) as img:
        seen = []
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            img.load()
            red = float(np.asarray(img.convert("RGB"))[..., 0].mean())
            seen.append((img.info.get("duration", 0), red))
        return seen


@pytest.mark.parametrize("original", ["GIF", "WEBP"])
def test_animations_stay_animated(tmp_path: Path, original: str) -> None:
    durations = [40, 50, 60, 70, 80]
    data = images.animated(original, frames=5, size=64, durations=durations)
    results = by_format(render(tmp_path, data, job("v", 32, 32, "cover", ALL_FORMATS)))
    expected = [red for _, red in frames_of(data)]
    for fmt in ("webp", "gif", "avif", "png"):
        seen = frames_of(Path(results[fmt].path).read_bytes())
        assert [d for d, _ in seen] == durations, fmt
        assert [red for _, red in seen] == pytest.approx(expected, abs=6), fmt
    for fmt in ("webp", "gif"):
        with Image.open(results[fmt].path) as img:
            assert img.info["loop"] == 0, fmt
    # JPEG cannot animate: the first frame.
    ((_, red),) = frames_of(Path(results["jpg"].path).read_bytes())
    assert red == pytest.approx(expected[0], abs=6)


def test_an_animation_that_plays_once_still_plays_once(tmp_path: Path) -> None:
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.putpalette([40 * i, 0, 0] * 256)
    data = images.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert "loop" not in Image.open(io.BytesIO(data)).info
    results = by_format(render(tmp_path, data, job("v", 16, 16, "contain", ("webp", "gif"))))
    with Image.open(results["webp"].path) as webp, Image.open(results["gif"].path) as gif:
        assert webp.info["loop"] == 1
        assert "loop" not in gif.info
        assert gif.n_frames == 3


# --- JPEG DCT scaling and memory --------------------------------------------------------------


def test_jpegs_are_decoded_at_a_reduced_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[tuple[int, int]] = []
    real = simplejpeg.decode_jpeg

    def counting(*args: Any, **kwargs: Any) -> Any:
        pixels = real(*args, **kwargs)
        decoded.append((pixels.shape[1], pixels.shape[0]))
        return pixels

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counting)
    data = images.encode(noisy_photo(2400, 1600), "JPEG", quality=90)
    (thumb,) = render(tmp_path, data, job("thumb", 320, 320, "cover", ("jpg",)))
    (large,) = render(tmp_path, data, job("large", 2048, 2048, "contain", ("jpg",)))
    thumb_decode, large_decode = decoded
    # A 320 px crop of a 1600 px square: 1/2 the full size has twice the pixels it needs.
    assert thumb_decode == (1200, 800)
    # 2048 of 2400 wide: 7/8 is the smallest DCT scale with enough (not the full size).
    assert large_decode == (2100, 1400)
    assert (thumb.width, large.width) == (320, 2048)


PEAK_SCRIPT = """
import json, sys
from imagegate.settings import Settings
from imagegate.uploader.process import Limits, Quality, init_worker
from imagegate.variants import DEFAULT_PRESETS, VariantJob, render_variants

# Set up as a variant worker is (pool.py): malloc's settings, Pillow's block cache, recycling.
s = Settings()
limits = Limits(s.image_max_pixels, s.image_max_side, s.image_max_frames, s.image_max_scans)
init_worker(limits, s.codec_cache_mib, 0, s.codec_recycle_mib)

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

src, out, formats = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(","))
quality = Quality(80, 79, 63)
# Warm up on a small image: the codecs' libraries and first allocations are not the job's.
render_variants(sys.argv[4], out, [VariantJob("w", DEFAULT_PRESETS[0].size, formats)], quality, 0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the kernel restarts the peak (VmHWM) from the memory held now
before = status("VmRSS")
jobs = [VariantJob(p.name, p.size, formats) for p in DEFAULT_PRESETS]
results = render_variants(src, out, jobs, quality, 0)
peak = status("VmHWM") - before
print(json.dumps({"peak_kib": peak, "sizes": [[r.width, r.height] for r in results]}))
"""


@pytest.mark.parametrize(("formats", "bitmaps"), [("jpg", 1), ("webp", 1), ("avif,webp,jpg", 2)])
def test_a_12_megapixel_jpeg_takes_less_than_its_full_bitmap(
    tmp_path: Path, formats: str, bitmaps: int
) -> None:
    """Every default preset of a 4000x3000 JPEG, in a fresh process set up as a variant worker:
    the peak memory beyond what the process held before is under the full decode's 48 MB (4
    bytes a pixel), twice that with AVIF: libaom alone takes ~45 MiB to encode the 2048 px
    variant, whatever the original (all of it was ~130 MB while the decode was copied and
    freed bitmaps stayed in Pillow's cache)."""
    src, warm = tmp_path / "12mp.jpg", tmp_path / "small.jpg"
    src.write_bytes(images.encode(noisy_photo(4000, 3000), "JPEG", quality=90))
    warm.write_bytes(images.encode(noisy_photo(400, 300), "JPEG", quality=90))
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(src), str(out), formats, str(warm)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    report = json.loads(done.stdout)
    per_job = len(formats.split(","))
    assert report["sizes"][::per_job] == [[320, 320], [640, 480], [1280, 960], [2048, 1536]]
    full_bitmap = 4000 * 3000 * 4
    assert 0 < report["peak_kib"] * 1024 <= bitmaps * full_bitmap, report


def test_a_call_gives_its_freed_bitmaps_back(tmp_path: Path) -> None:
    """Pillow keeps freed bitmaps for the next one (a variant worker's block cache, 64 MiB):
    resident, and hidden in an idle worker's memory. A call gives them back as it ends."""
    blocks = pillow_core.get_blocks_max()
    pillow_core.set_blocks_max(4)  # what a variant worker keeps (process.init_worker)
    try:
        data = images.encode(noisy_photo(1600, 1200), "JPEG", quality=90)
        results = render(tmp_path, data, job("a", 320, 320), job("b", 1200, 900, "contain"))
        assert [(r.width, r.height) for r in results] == [(320, 320), (1200, 900)]
        assert pillow_core.get_stats()["blocks_cached"] == 0
        Image.new("RGB", (1200, 900)).resize((600, 450))  # the cache itself still works
        assert pillow_core.get_stats()["blocks_cached"] > 0
    finally:
        pillow_core.clear_cache()
        pillow_core.set_blocks_max(blocks)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_the_avif_options_for_stills_change_no_byte(mode: str) -> None:
    """AVIF_STILL only saves libaom memory: the very bytes it made without it (alpha too)."""
    picture = noisy_photo(320, 240).convert(mode)
    if mode == "RGBA":
        picture.putalpha(Image.linear_gradient("L").resize(picture.size))
    plain, still = io.BytesIO(), io.BytesIO()
    options = {"quality": QUALITY.avif, "speed": AVIF_SPEED, "max_threads": 1}
    picture.save(plain, format="AVIF", **options)
    picture.save(still, format="AVIF", advanced=AVIF_STILL, **options)
    assert still.getvalue() == plain.getvalue()
    with Image.open(still) as got:
        assert got.mode == mode
        assert colour.ssim(got.convert("RGB"), picture.convert("RGB")) >= 0.9


# --- failures --------------------------------------------------------------------------------


def test_a_failed_write_removes_what_the_call_wrote(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    taken = out / "t.b.webp"  # someone else's file, in the way of the last output
    taken.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        render(
            tmp_path,
            images.encode(noisy_photo(200, 150), "PNG"),
            job("a", 64, 64, "cover", ("png", "webp")),
            job("b", 32, 32, "cover", ("webp",)),
            token="t",
        )
    assert sorted(p.name for p in out.iterdir()) == ["t.b.webp"]
    assert taken.read_bytes() == b"theirs"


def test_running_over_the_budget_leaves_nothing(tmp_path: Path) -> None:
    # The work is fixed (every default preset, AVIF included), the budget a sliver of it.
    data = images.encode(noisy_photo(2000, 1500), "JPEG", quality=90)
    jobs = [VariantJob(p.name, p.size, ("avif", "webp", "jpg")) for p in DEFAULT_PRESETS]
    with pytest.raises(ImageRejected, match=r"took longer than 0\.001 s") as caught:
        render(tmp_path, data, *jobs, budget=0.001)
    assert caught.value.status == 422
    assert list((tmp_path / "out").iterdir()) == []


def truncated_png() -> bytes:
    data = images.encode(noisy_photo(300, 200), "PNG")
    return data[: len(data) // 2]


def truncated_gif() -> bytes:
    data = images.animated("GIF", frames=6, size=64)
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (truncated_png(), 422, "PNG image is corrupt or truncated"),
        (truncated_gif(), 422, "GIF image"),
        (b"%PDF-1.4 not an image" * 4, 415, "file is not an image of an accepted type"),
    ],
    ids=["truncated-png", "truncated-animation", "not-an-image"],
)
def test_a_broken_original_is_refused_and_leaves_nothing(
    tmp_path: Path, data: bytes, status: int, message: str
) -> None:
    with pytest.raises(ImageRejected, match=message) as caught:
        render(tmp_path, data, job("a", 32, 32, "cover", ALL_FORMATS), job("b", 16, 16))
    assert caught.value.status == status
    assert list((tmp_path / "out").iterdir()) == []


# --- through a real codec pool ---------------------------------------------------------------


def test_variants_through_a_codec_pool(tmp_path: Path) -> None:
    from imagegate.uploader.pool import CodecPool

    src = tmp_path / "original.gif"
    src.write_bytes(images.animated("GIF", frames=3, size=64))
    bad = tmp_path / "bad"
    bad.write_bytes(b"not an image at all" * 4)
    out = tmp_path / "out"
    out.mkdir()
    jobs = [VariantJob(p.name, p.size, VARIANT_FORMATS["gif"]) for p in DEFAULT_PRESETS[:2]]

    async def run() -> tuple[list[Rendered], AppError]:
        pool = CodecPool(1, 60.0, LIMITS, QUALITY, 0)
        try:
            results = await pool.render_variants(src, out, jobs, pixels=64 * 64 * 3)
            with pytest.raises(AppError) as caught:
                await pool.render_variants(bad, out, jobs, pixels=100)
            return results, caught.value
        finally:
            pool.close()

    results, error = asyncio.run(run())
    assert [(r.key, r.fmt, r.width, r.height) for r in results] == [
        ("thumb", "avif", 64, 64),
        ("thumb", "webp", 64, 64),
        ("thumb", "gif", 64, 64),
        ("small", "avif", 64, 64),
        ("small", "webp", 64, 64),
        ("small", "gif", 64, 64),
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(r.path).name for r in results)
    for result in results:
        with Image.open(result.path) as img:
            assert getattr(img, "n_frames", 1) == 3, result
    assert (error.status, error.message) == (
        415,
        "file is not an image of an accepted type (JPEG, PNG, GIF, WebP or AVIF)",
    )
