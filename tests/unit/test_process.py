"""The codec pipeline on its own: identification, limits, normalization, size choice."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imagegate.uploader.formats import AVIF, GIF, JPEG, PNG, WEBP, is_image_name, sniff
from imagegate.uploader.process import (
    ImageRejected,
    Limits,
    Processed,
    Quality,
    init_worker,
    process_image,
)
from tests.support import images

LIMITS = Limits(max_pixels=50_000_000, max_side=10_000, max_frames=900)
QUALITY = Quality(jpeg=80, webp=79, avif=63)


def run(tmp_path: Path, data: bytes, limits: Limits = LIMITS) -> tuple[Processed, bytes]:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(data)
    result = process_image(str(src), str(dst), limits, QUALITY)
    return result, dst.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("JPEG", JPEG), ("PNG", PNG), ("GIF", GIF), ("WEBP", WEBP), ("AVIF", AVIF)],
)
def test_sniff_knows_the_allowed_formats(fmt: str, expected: object) -> None:
    assert sniff(images.encode(images.photo(16, 16), fmt)[:64]) is expected


@pytest.mark.parametrize("kind", sorted(images.NOT_IMAGES))
def test_sniff_rejects_everything_else(kind: str) -> None:
    assert sniff(images.NOT_IMAGES[kind][:64]) is None


def test_image_names_are_strict() -> None:
    assert is_image_name("21f2e729-7af7-4607-b6ca-c313b27985ae.jpg")
    assert not is_image_name("21f2e729-7af7-4607-b6ca-c313b27985ae.jpeg")
    assert not is_image_name("../21f2e729-7af7-4607-b6ca-c313b27985ae.jpg")


def test_stored_image_is_never_larger_than_the_upload(tmp_path: Path) -> None:
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        data = images.encode(
            images.photo(200, 150), fmt, **({"quality": 30} if fmt == "JPEG" else {})
        )
        result, out = run(tmp_path, data)
        assert len(out) == result.bytes <= len(data), fmt


def test_high_quality_jpeg_is_recompressed(tmp_path: Path) -> None:
    data = images.jpeg(800, 600, quality=98)
    result, out = run(tmp_path, data)
    assert result.reencoded
    assert len(out) < len(data) * 0.7


def test_dimension_check_happens_before_decoding(tmp_path: Path) -> None:
    # The header claims 9000x9000 but holds only a few bytes: a decode would fail differently.
    with pytest.raises(ImageRejected) as info:
        run(tmp_path, images.png_header_only(9000, 9000), Limits(50_000_000, 10_000, 900))
    assert info.value.status == 422
    assert "pixels in all" in info.value.message


def test_frames_count_toward_the_pixel_budget(tmp_path: Path) -> None:
    data = images.animated("GIF", frames=10, size=64)
    with pytest.raises(ImageRejected, match="pixels in all"):
        run(tmp_path, data, Limits(max_pixels=64 * 64 * 9, max_side=10_000, max_frames=900))


def test_non_image_is_415(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected) as info:
        run(tmp_path, images.NOT_IMAGES["svg"])
    assert info.value.status == 415


def test_rejection_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageRejected(422, "bad")))
    assert (err.status, err.message) == (422, "bad")


@pytest.mark.parametrize(("cache_mib", "blocks"), [(0, 0), (64, 4), (100, 6), (15, 0)])
def test_worker_keeps_a_bounded_block_cache(cache_mib: int, blocks: int) -> None:
    """Freed bitmap blocks are kept for the next image, up to the configured memory (in whole
    blocks of Pillow's default 16 MiB)."""
    assert Image.core.get_block_size() == 16 * 2**20, "PILLOW_BLOCK_SIZE is set"
    saved = Image.core.get_blocks_max(), Image.MAX_IMAGE_PIXELS
    try:
        init_worker(LIMITS, cache_mib)
        assert Image.core.get_blocks_max() == blocks
        assert LIMITS.max_pixels == Image.MAX_IMAGE_PIXELS
    finally:
        Image.core.set_blocks_max(saved[0])
        Image.MAX_IMAGE_PIXELS = saved[1]


_CEILING_SCRIPT = """
import sys
from PIL import Image
from imagegate.uploader.process import ImageRejected, Limits, Quality, init_worker, process_image
src, dst = sys.argv[1], sys.argv[2]
Image.new("RGB", (8000, 6000), (40, 90, 200)).save(src, "PNG")  # 48 MP: ~190 MiB decoded
limits = Limits(50_000_000, 10_000, 900)
init_worker(limits, 0, memory_mib=int(sys.argv[3]), recycle_mib=0)
try:
    process_image(src, dst, limits, Quality(80, 79, 63))
except ImageRejected as exc:
    print(exc.status, exc.message)
else:
    print(201)
"""


@pytest.mark.parametrize(
    ("memory_mib", "expected"), [(160, "422 image needs more memory"), (0, "201")]
)
def test_memory_ceiling_is_a_clean_422(tmp_path: Path, memory_mib: int, expected: str) -> None:
    """A worker under RLIMIT_AS that cannot allocate a legit 48 MP bitmap answers 422 (not a
    crash); the same image without the ceiling goes through."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CEILING_SCRIPT, str(tmp_path / "in"), str(tmp_path / "out"),
         str(memory_mib)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip().startswith(expected), done.stdout + done.stderr


def test_a_worker_over_its_memory_mark_is_replaced(tmp_path: Path) -> None:
    """After a job that leaves the worker over codec_recycle_mib, pebble starts a fresh one, and
    uploads keep working; under the mark the worker stays."""
    import asyncio

    from imagegate.uploader.pool import CodecPool
    from imagegate.uploader.process import warm_up

    src = tmp_path / "in.jpg"
    src.write_bytes(images.jpeg(640, 480))

    async def pids(recycle_mib: int) -> list[int]:
        pool = CodecPool(1, 60.0, LIMITS, QUALITY, 0, recycle_mib=recycle_mib)
        try:
            seen = []
            for _ in range(3):
                seen.append(await asyncio.wrap_future(pool._pool.schedule(warm_up)))
                await pool.process(src, tmp_path / "out")
            return seen
        finally:
            pool.close()

    assert len(set(asyncio.run(pids(recycle_mib=1)))) == 3  # every job leaves it over 1 MiB
    assert len(set(asyncio.run(pids(recycle_mib=100_000)))) == 1


_PRIORITY_SCRIPT = """
import os, sys
from imagegate.uploader.process import Limits, init_worker
init_worker(Limits(50_000_000, 10_000, 900), 0, nice=int(sys.argv[1]))
print(os.sched_getscheduler(0) == os.SCHED_IDLE, os.nice(0))
"""


@pytest.mark.parametrize(("nice", "expected"), [(19, "True 19"), (0, "False 0")])
def test_variant_workers_run_in_the_idle_class(nice: int, expected: str) -> None:
    """A worker started with a nice value (the variant workers) is in Linux's idle scheduling
    class too, so an upload's process that wakes up takes the core at once; upload workers
    (nice 0) stay in the normal class."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PRIORITY_SCRIPT, str(nice)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == expected, done.stdout + done.stderr
