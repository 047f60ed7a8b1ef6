"""The variant rows of bench/run (``--only variants``; also in the full run and ``--quick``).

1. Making every default preset of a 12 MP JPEG in AVIF, WebP and JPEG: one production variant
   worker (``CodecPool.render_variants``) against a bare Pillow loop making the same outputs
   (the renderer's sizes, resampling and encoder settings), alternating rounds. The bare loop
   runs in one process started as the variant workers are (their initializer: nice 10, block
   cache, memory ceiling), so the ratio is the renderer's own cost. Goal ≥ 0.8.
2. The peak RSS one variant job on that JPEG adds to an idle variant worker, ÷ its decoded
   bitmap (width x height x 3), with and without AVIF. Goal ≤ 1.
3. The ``thumb`` variant's bytes in each format, and AVIF's and WebP's as a fraction of JPEG's.
4. Embedded 1 MP uploads (p50): the working tree making every upload's variants in the
   background against the same code making them only on demand, alternating rounds; a fresh
   server each round, so no round inherits another's backlog of variants to make. Goal: p50
   ≤ 1.1 x. Also against the code before variants (``BEFORE_VARIANTS``, unpacked by ``git
   archive``): what everything since costs uploads, reported.
5. ``thumb`` GET through the stack's gateway (a cache hit) and 6. from embedded mode, each next
   to NGINX serving the same bytes from disk, alternating rounds. Goals ≥ 0.9 and ≥ 0.25.

The picture is made here: a "photo" of a smooth sky, straight edges and fine lines over a
textured ground (noise with a photograph's 1/f spectrum) with some sensor grain, 3.5 MB as a
JPEG at quality 92 — the bench's other 12 MP image (gradient and lines) is much smoother than a
photograph at thumbnail scale, which would flatter AVIF's and WebP's bytes.

Nothing here imports bench.py (which runs as ``__main__``): bench.py passes itself in
(``bench``) for its ``Bench`` rows, wrk runs and helpers.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from math import ceil
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
from PIL import Image

from imagegate.settings import Settings
from imagegate.uploader.formats import BY_EXT
from imagegate.uploader.inspect import Limits
from imagegate.uploader.pool import VARIANT_NICE, CodecPool
from imagegate.uploader.process import Quality, init_worker
from imagegate.variants.presets import DEFAULT_PRESETS, crop_box, output_size, variant_formats
from imagegate.variants.render import AVIF_SPEED, AVIF_STILL, RESIZE_GAP, VariantJob
from tests.support.images import encode, photo
from tests.support.server import ServerProcess

# The last commit before variants (HEAD of main when these rows were written).
BEFORE_VARIANTS = "8c82c20"
# What Chrome sends for an <img>: the gateway's map picks AVIF.
ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
PHOTO_SIZE = (4000, 3000)
FORMATS = variant_formats("jpg")  # avif, webp, jpg: what a JPEG original gets
MADE = re.compile(r"^imagegate_variants_made_total (\S+)$", re.MULTILINE)


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture that compresses like a photograph at every scale: the tests' smooth ``photo``
    (a gradient sky, straight edges, fine lines) fading into a textured ground of 1/f noise
    (a photograph's spectrum) in its lower part, plus sensor-like grain. Deterministic."""
    rng = np.random.default_rng(seed)
    small_w, small_h = max(1, width // 4), max(1, height // 4)
    fy = np.fft.fftfreq(small_h)[:, None]
    fx = np.fft.rfftfreq(small_w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    layers = []
    for _ in range(3):
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**1.1
        layer = np.fft.irfft2(spectrum, s=(small_h, small_w))
        layers.append((layer - layer.mean()) / (layer.std() or 1.0))
    base, a, b = layers  # one luminance texture, tinted a little differently per channel
    texture = np.stack([base * 0.8 + a * 0.2, base, base * 0.8 + b * 0.2], axis=-1)
    ground = Image.fromarray(np.clip(texture * 35 + 110, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    scene = np.asarray(photo(width, height, seed), dtype=np.float32)
    weight = np.clip((np.arange(height, dtype=np.float32) / height - 0.35) * 3, 0, 1) * 0.85
    weight = weight[:, None, None]
    mixed = scene * (1 - weight) + np.asarray(ground, dtype=np.float32) * weight
    mixed += rng.normal(0, 3, mixed.shape).astype(np.float32)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def preset_jobs(formats: Sequence[str] = FORMATS) -> list[VariantJob]:
    """Every default preset in ``formats``: what the maker asks after a JPEG upload."""
    return [VariantJob(p.name, p.size, tuple(formats)) for p in DEFAULT_PRESETS]


# --- the bare Pillow loop (the ceiling of row 1) ---------------------------------------------


def encoder_options(ext: str, quality: Quality) -> dict[str, Any]:
    """The renderer's encoder settings for a still picture (variants/render.py ``_encode``,
    its ``AVIF_SPEED`` and ``AVIF_STILL``); tests/unit/test_bench_variants.py checks they give
    its very bytes."""
    if ext == "jpg":
        return {"quality": quality.jpeg, "progressive": True, "optimize": True}
    if ext == "webp":
        return {"quality": quality.webp, "method": 4}
    if ext == "avif":
        return {
            "quality": quality.avif,
            "speed": AVIF_SPEED,
            "max_threads": 1,
            "advanced": AVIF_STILL,
        }
    raise ValueError(f"no still encoder settings for {ext!r}")


def bare_variants(
    data: bytes, jobs: Sequence[VariantJob], quality: Quality
) -> list[tuple[str, str, tuple[int, int], bytes]]:
    """What a plain Pillow loop does to make ``jobs`` from one upright RGB JPEG: decode once
    (Pillow's own DCT scaling, ``draft``, as far as the largest output allows), then for each
    job the renderer's region (``crop_box``) Lanczos-resized to its size (``output_size``,
    ``RESIZE_GAP``) and encoded in its formats. Returns (key, ext, size, bytes) in job order."""
    img = Image.open(io.BytesIO(data))
    full = img.size
    plans = [(job, output_size(*full, job.size), crop_box(*full, job.size)) for job in jobs]
    need = max(max(out[0] / (r - x), out[1] / (btm - y)) for _, out, (x, y, r, btm) in plans)
    img.draft("RGB", (ceil(full[0] * min(1.0, need)), ceil(full[1] * min(1.0, need))))
    img.load()
    sx, sy = img.width / full[0], img.height / full[1]
    made = []
    for job, out, (left, top, right, bottom) in plans:
        box = (left * sx, top * sy, right * sx, bottom * sy)
        picture = img.resize(out, Image.Resampling.LANCZOS, box=box, reducing_gap=RESIZE_GAP)
        picture.info = {}  # as the renderer: no metadata reaches a variant
        for ext in job.formats:
            buffer = io.BytesIO()
            picture.save(buffer, format=BY_EXT[ext].pillow, **encoder_options(ext, quality))
            made.append((job.key, ext, picture.size, buffer.getvalue()))
    return made


def _bare_round(data: bytes, jobs: Sequence[VariantJob], quality: Quality, count: int) -> float:
    """Originals per second of the bare loop, timed inside its process."""
    start = time.perf_counter()
    for _ in range(count):
        bare_variants(data, jobs, quality)
    return count / (time.perf_counter() - start)


@contextmanager
def bare_process(settings: Settings) -> Iterator[ProcessPoolExecutor]:
    """One process started as ``CodecPool.from_settings(settings, variants=True)`` starts its
    workers: forkserver, the codec workers' initializer with the same limits, block cache,
    memory ceiling and nice level."""
    limits = Limits(
        settings.image_max_pixels,
        settings.image_max_side,
        settings.image_max_frames,
        settings.image_max_scans,
    )
    initargs = (
        limits,
        settings.codec_cache_mib,
        settings.codec_memory_mib,
        settings.codec_recycle_mib,
        VARIANT_NICE,
    )
    executor = ProcessPoolExecutor(
        1, mp_context=get_context("forkserver"), initializer=init_worker, initargs=initargs
    )
    try:
        yield executor
    finally:
        executor.shutdown(cancel_futures=True)


def quality_of(settings: Settings) -> Quality:
    return Quality(settings.jpeg_quality, settings.webp_quality, settings.avif_quality)


# --- rows 1-3: the renderer in a variant worker ----------------------------------------------


def generation_rows(b: Any, bench: ModuleType, data: bytes) -> None:
    """Rows 1 and 3: originals/s of one variant worker and of the bare loop, alternating rounds
    of a fixed number of originals (each takes seconds: a timed window would count fractions);
    the thumb's bytes in each format, from the worker's output."""
    settings = Settings(variant_workers=1)
    quality, jobs = quality_of(settings), preset_jobs()
    folder = b.work / "variants-render"
    out = folder / "out"
    out.mkdir(parents=True)
    src = folder / "12mp.jpg"
    src.write_bytes(data)
    pixels = PHOTO_SIZE[0] * PHOTO_SIZE[1]
    count = 1 if b.quick else 3
    thumbs: dict[str, int] = {}
    pool = CodecPool.from_settings(settings, variants=True)
    try:
        with bare_process(settings) as bare:

            async def rendered(n: int) -> float:
                start = time.perf_counter()
                for _ in range(n):
                    results = await pool.render_variants(src, out, jobs, pixels)
                rate = n / (time.perf_counter() - start)
                thumbs.update({r.fmt: r.bytes for r in results if r.key == "thumb"})
                return rate

            def worker_round(_: int) -> Any:
                rate = asyncio.run(rendered(count))
                for path in out.iterdir():
                    path.unlink()
                return bench.Load.rate(rate)

            def bare_round(_: int) -> Any:
                return bench.Load.rate(
                    bare.submit(_bare_round, data, jobs, quality, count).result()
                )

            # Both warmed on one original: process start, codec libraries, the block cache.
            asyncio.run(rendered(1))
            bare.submit(_bare_round, data, jobs, quality, 1).result()
            ceiling, worker = b.alternating(bare_round, worker_round)
    finally:
        pool.close()
    what = "variants 12MP, 4 presets in AVIF/WebP/JPEG"
    b.add(f"{what}: bare Pillow loop, 1 process", "baseline", "images/s", ceiling.rps)
    b.add(f"{what}: 1 variant worker (goal ≥ 0.8)", "embedded", "images/s", worker.rps, ceiling.rps)

    for ext in FORMATS:
        b.add(f"thumb 320x320 of a 12MP photo, {ext.upper()}", "embedded", "bytes", thumbs[ext])
    for ext in ("avif", "webp"):
        b.add(
            f"thumb {ext.upper()} ÷ thumb JPEG", "embedded", "fraction", thumbs[ext] / thumbs["jpg"]
        )


def _descendants(pid: int, children: dict[int, list[int]]) -> set[int]:
    found, todo = set(), list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.add(child)
        todo.extend(children.get(child, []))
    return found


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def job_peaks(bench: ModuleType, work: Path, src: Path, formats: Sequence[str]) -> list[int]:
    """The peak RSS growth in bytes of two variant jobs in a row, each making every default
    preset of ``src`` in ``formats``, in a fresh production variant worker; then its peak RSS.
    The first job also fills the worker's block cache (kept between jobs: its idle RSS grows);
    the second is the steady state. Each growth is over the worker's RSS just before the job;
    the peak is sampled (bench's ``peak_rss``) and the kernel's high-water mark, reset before
    the job, catches what the 50 ms sampling could miss (they agree within 1 MiB here)."""
    jobs = preset_jobs(formats)
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    before = _descendants(os.getpid(), bench.process_children())
    pool = CodecPool.from_settings(Settings(variant_workers=1), variants=True)
    found: list[int] = []
    try:
        asyncio.run(pool.warm())
        children = bench.process_children()
        new = _descendants(os.getpid(), children) - before
        # The worker is the forkserver's child: neither the forkserver nor the resource
        # tracker (this process's own children, started with the first pool).
        direct = set(children.get(os.getpid(), []))
        workers = [pid for pid in new - direct if not children.get(pid)]
        if len(workers) != 1:
            raise RuntimeError(f"expected one new variant worker, found {sorted(workers)}")
        (pid,) = workers
        for _ in range(2):
            idle = bench.tree_rss([pid], descendants=False)
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM restarts from the RSS now
            with bench.peak_rss([pid], descendants=False) as sampled:
                asyncio.run(pool.render_variants(src, out, jobs, PHOTO_SIZE[0] * PHOTO_SIZE[1]))
            peak = max(sampled[0], _status_kib(pid, "VmHWM") * 1024)
            found.append(peak - idle)
            for path in out.iterdir():
                path.unlink()
    finally:
        pool.close()
    return [*found, peak]


def memory_rows(b: Any, bench: ModuleType, data: bytes) -> None:
    """Row 2: a variant job's peak RSS growth ÷ the decoded bitmap, with and without AVIF."""
    folder = b.work / "variants-rss"
    src = folder / "12mp.jpg"
    folder.mkdir()
    src.write_bytes(data)
    bitmap = PHOTO_SIZE[0] * PHOTO_SIZE[1] * 3
    for label, formats in (("AVIF/WebP/JPEG", FORMATS), ("WebP/JPEG, no AVIF", ("webp", "jpg"))):
        first, steady, peak = job_peaks(bench, folder / "-".join(formats), src, formats)
        goal = " (goal ≤ 1)" if formats == FORMATS else ""
        scenario = f"variant job 12MP, 4 presets in {label}"
        b.add(scenario, "embedded", "peak RSS MiB", peak / 2**20)
        b.add(f"{scenario}{goal}", "embedded", "RSS/bitmap", steady / bitmap)
        b.add(f"{scenario}, a fresh worker's first", "embedded", "RSS/bitmap", first / bitmap)


# --- row 4: uploads before and after variants ------------------------------------------------


def _made(client: httpx.Client) -> float:
    match = MADE.search(client.get("/metrics").text)
    return float(match.group(1)) if match else 0.0


def upload_rows(b: Any, bench: ModuleType) -> None:
    """Row 4: embedded 1 MP uploads in alternating rounds, each with a fresh server (and data
    folder), so that no round pays for another's backlog of variants: the working tree with
    variants made only on demand (``IMAGEGATE_VARIANTS_AFTER_UPLOAD=false``: the same code
    without this change's work per upload, the goal's "before"), the working tree as it runs
    by default (every upload's variants made in the background), and the code before variants
    (``BEFORE_VARIANTS``: what else made uploads slower since, reported). Two loads per round:
    as the other upload rows (2 connections per core: the codec workers saturate the cores),
    and one upload at a time (a core left over for the variant worker). Before the clock each
    server takes one upload (the default server makes its variants too: its variant worker is
    started)."""
    src = bench.source_at(BEFORE_VARIANTS, b.work)
    env = {"on demand": {"IMAGEGATE_VARIANTS_AFTER_UPLOAD": "false"}, "background": {}}
    if src is not None:
        env["old"] = {"PYTHONPATH": str(src)}
    else:
        print(f"uploads before variants: skipped, no commit {BEFORE_VARIANTS}", flush=True)
    loads = {"1 at a time": 1, "saturated": bench.CORES * 2}
    per_image = len(DEFAULT_PRESETS) * len(FORMATS)
    got: dict[tuple[str, str], list[Any]] = {(n, k): [] for n in env for k in loads}
    made: dict[str, list[float]] = {k: [] for k in loads}  # originals done per second
    seconds = max(2, b.duration // 2)

    def one_round(name: str, number: int) -> None:
        server = ServerProcess(b.work / "variants-upload" / f"{name}-{number}" / "data")
        server.env = env[name]
        server.data_dir.parent.mkdir(parents=True)
        server.start()
        try:
            with httpx.Client(base_url=server.base_url, timeout=120) as c:
                tokens = bench.uploaders(c)
                first = bench.upload(c, tokens[0], bench.IMAGES["1mp"])
                thumb = c.get(f"/images/thumb/{first}", headers={"Accept": ACCEPT})
                # Made on demand, or by then in the background; the old server must not know
                # the route, or it is not the code before.
                if thumb.status_code != (404 if name == "old" else 200):
                    raise RuntimeError(f"{name} server: thumb answered {thumb.status_code}")
                for key, connections in loads.items():
                    start = _made(c)
                    got[(name, key)].append(
                        b.wrk(
                            f"{server.base_url}/v1/upload",
                            method="POST",
                            body=bench.IMAGES["1mp"],
                            tokens=tokens,
                            unique=True,
                            connections=connections,
                            duration=seconds,
                        )
                    )
                    if name == "background":
                        made[key].append((_made(c) - start) / per_image / seconds)
        finally:
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                server.kill()

    for number in range(1 if b.quick else 3):
        for name in env:
            one_round(name, number)
    for key in loads:
        base, new = (bench.Load.combine(got[(name, key)]) for name in ("on demand", "background"))
        before = f"upload 1MP {key}, variants only on demand"
        after = f"upload 1MP {key}, variants in the background"
        b.add(before, "embedded", "images/s", base.rps, load=base)
        b.add(after, "embedded", "images/s", new.rps, base.rps, load=new)
        b.add(before, "embedded", "p50 ms", base.p50_ms, load=base)
        b.add(f"{after} (goal ≤ 1.1)", "embedded", "p50 ms", new.p50_ms, base.p50_ms, load=new)
        b.add(f"{after}", "embedded", "p99 ms", new.p99_ms, base.p99_ms, load=new)
        done = sorted(made[key])[len(made[key]) // 2]
        b.add(f"{after}: variants made meanwhile", "embedded", "images/s", done)
        if "old" in env:
            old = bench.Load.combine(got[("old", key)])
            label = f"upload 1MP {key}, code before variants ({BEFORE_VARIANTS})"
            b.add(label, "embedded", "p50 ms", old.p50_ms, load=old)
            b.add(f"{after}, against that code", "embedded", "p50 ms", new.p50_ms, old.p50_ms)


# --- rows 5 and 6: a thumb GET against NGINX static ------------------------------------------


def wait_thumb(client: httpx.Client, name: str, timeout: float = 120) -> bytes:
    """The public ``thumb`` of ``name`` as ``ACCEPT`` gets it (AVIF), once it is made."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/images/thumb/{name}", headers={"Accept": ACCEPT})
        if r.status_code == 200 and r.headers.get("content-type") == "image/avif":
            return r.content
        if time.monotonic() > deadline:
            raise RuntimeError(f"thumb of {name}: {r.status_code} {r.text[:200]}")
        time.sleep(0.2)


def wait_until(done: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done after {timeout:g} s")
        time.sleep(0.2)


def thumb_rows(
    b: Any,
    bench: ModuleType,
    target: str,
    base_url: str,
    token: str,
    data: bytes,
    goal: float,
    settled: Callable[[str], bool],
) -> None:
    """``thumb`` GET (AVIF by Accept) from ``base_url`` against NGINX static of the same bytes,
    the same request headers, alternating rounds. The clock starts once ``settled(name)``: the
    upload's background variant job (seconds of CPU) is over and takes no share of the cores."""
    with httpx.Client(base_url=base_url, timeout=120) as c:
        name = bench.upload(c, token, data)
        thumb = wait_thumb(c, name)
        wait_until(lambda: settled(name), f"variants of {name}")
        for _ in range(3):  # a hit from here on (the gateway caches after the first answer)
            wait_thumb(c, name)
    headers = {"Accept": ACCEPT}
    with bench.static_nginx(b.work / f"variants-nginx-{target}", {"thumb.avif": thumb}) as static:
        ceiling, mine = b.alternating(
            lambda s: b.wrk(f"{static}/thumb.avif", headers=headers, duration=s),
            lambda s: b.wrk(f"{base_url}/images/thumb/{name}", headers=headers, duration=s),
        )
    how = "through the gateway, cached" if target == "stack" else "embedded"
    b.add(
        f"NGINX static thumb ({len(thumb):,} B), alternating",
        "baseline",
        "req/s",
        ceiling.rps,
        load=ceiling,
    )
    b.add(f"thumb GET {how} (goal ≥ {goal:g})", target, "req/s", mine.rps, ceiling.rps, load=mine)


def embedded_thumb_rows(b: Any, bench: ModuleType, data: bytes) -> None:
    """Row 6, on a fresh embedded server: its one upload's variants are all it makes."""
    server = ServerProcess(b.work / "variants-serving" / "data")
    server.data_dir.parent.mkdir(parents=True)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            (token,) = bench.uploaders(c, 1)
            per_image = len(DEFAULT_PRESETS) * len(FORMATS)
            thumb_rows(
                b,
                bench,
                "embedded",
                server.base_url,
                token,
                data,
                0.25,
                lambda _: _made(c) >= per_image,
            )
    finally:
        server.stop()


def stack_thumb_rows(b: Any, bench: ModuleType, stack: ModuleType, data: bytes) -> None:
    """Row 5: the stack's worker makes the variants; they are settled once every one is in
    storage (asked of MinIO directly: a miss at the gateway would make it on demand)."""
    api = f"http://127.0.0.1:{stack.PLAIN_PORT}"
    minio = f"http://127.0.0.1:{stack.MINIO_PORT}/{stack.BUCKET}/public"

    def stored(name: str) -> bool:
        stem = name.rsplit(".", 1)[0]
        return all(
            httpx.head(f"{minio}/{stem}.{p.name}.{ext}").status_code == 200
            for p in DEFAULT_PRESETS
            for ext in FORMATS
        )

    with httpx.Client(base_url=api, timeout=60) as c:
        (token,) = bench.uploaders(c, 1)
    thumb_rows(b, bench, "stack", api, token, data, 0.9, stored)


def variant_rows(b: Any, bench: ModuleType, stack: ModuleType | None) -> None:
    """Every variant row; the gateway's (row 5) only with ``stack`` (its module, stack up)."""
    data = encode(photo_like(*PHOTO_SIZE), "JPEG", quality=92)
    generation_rows(b, bench, data)
    memory_rows(b, bench, data)
    upload_rows(b, bench)
    embedded_thumb_rows(b, bench, data)
    if stack is not None:
        stack_thumb_rows(b, bench, stack, data)
