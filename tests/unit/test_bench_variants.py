"""The variant bench's bare Pillow loop (bench/variants.py) makes what the renderer makes: the
same outputs, sizes and formats, with the renderer's encoder settings (the very same bytes
from the same picture), so row 1's ceiling is the same work without the renderer around it."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from imagegate.uploader.formats import BY_EXT
from imagegate.uploader.process import Quality
from imagegate.variants.render import _encode, render_variants
from tests.support.images import encode

ROOT = Path(__file__).resolve().parents[2]
QUALITY = Quality(80, 79, 63)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


variants = load("variants")


@pytest.fixture(scope="module")
def original() -> bytes:
    return encode(variants.photo_like(1600, 1200, seed=3), "JPEG", quality=92)


def test_the_picture_is_deterministic_and_photo_sized() -> None:
    a, b = variants.photo_like(160, 120, seed=5), variants.photo_like(160, 120, seed=5)
    assert (a.mode, a.size) == ("RGB", (160, 120))
    assert a.tobytes() == b.tobytes()
    assert variants.photo_like(160, 120, seed=6).tobytes() != a.tobytes()


def test_the_bare_loop_makes_the_renderers_outputs(tmp_path: Path, original: bytes) -> None:
    src = tmp_path / "original.jpg"
    src.write_bytes(original)
    jobs = variants.preset_jobs()
    rendered = render_variants(str(src), str(tmp_path), jobs, QUALITY, 0)
    bare = variants.bare_variants(original, jobs, QUALITY)
    assert [(k, ext, size) for k, ext, size, _ in bare] == [
        (r.key, r.fmt, (r.width, r.height)) for r in rendered
    ]
    # Every preset of a 1600x1200 photo in AVIF, WebP and JPEG (large: never upscaled).
    assert [size for _, ext, size, _ in bare if ext == "jpg"] == [
        (320, 320),
        (640, 480),
        (1280, 960),
        (1600, 1200),
    ]
    for (key, ext, _, data), r in zip(bare, rendered, strict=True):
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == BY_EXT[ext].pillow
        # Not byte-equal: the renderer decodes at another DCT scale; the settings are equal
        # (next test), so sizes differ by the pixels alone.
        assert abs(len(data) - r.bytes) <= 0.1 * r.bytes, (key, ext, len(data), r.bytes)


@pytest.mark.parametrize("ext", ["avif", "webp", "jpg"])
def test_the_encoder_settings_are_the_renderers(ext: str) -> None:
    picture = variants.photo_like(320, 240, seed=2)
    out = io.BytesIO()
    picture.save(out, format=BY_EXT[ext].pillow, **variants.encoder_options(ext, QUALITY))
    assert out.getvalue() == _encode([picture], BY_EXT[ext], [], None, QUALITY)


def test_other_formats_have_no_still_settings_here() -> None:
    with pytest.raises(ValueError, match="png"):
        variants.encoder_options("png", QUALITY)
