"""A bounded pool of codec worker processes: image work never runs on the event loop.

Each image gets a CPU budget sized from its pixels, enforced inside the worker (a CPU-time
alarm: a clean 422); pebble's hard timeout at the ceiling kills and replaces a worker stuck in
C code, so one pathological image cannot hold a core forever. Workers run under an
address-space ceiling and are replaced after a job that leaves them big.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import secrets
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pebble import ProcessExpired, ProcessPool

from imagegate.errors import AppError, Unavailable, Unprocessable
from imagegate.settings import Settings
from imagegate.uploader.inspect import ImageRejected, Limits

# The workers' entry points, not process.py's functions: this process never imports the image
# code (jobs.py).
from imagegate.uploader.jobs import (
    Budget,
    Processed,
    Quality,
    Rendered,
    VariantJob,
    init_worker,
    process_image,
    render_variants,
    warm_up,
)

log = logging.getLogger("imagegate")

# Variant workers yield the CPU to upload workers (nice 0): at nice 19 they get ~1.5 % of a
# contended core (at 10, uploads' p50 grew 10-33 % while variants were being made).
VARIANT_NICE = 19

# Background variant jobs' hard timeout, x the upload one: their worker waits on uploads (the
# idle class, and stopped up to 4/5 of the time while they run: variants/yielding.py) and is
# no less stuck for it; their CPU budget, the usual limit, is an upload's. A job someone waits
# for (on demand) is never held back and keeps the upload timeout.
BACKGROUND_WALL_STRETCH = 8

# After a cancelled job, when its worker has surely stopped: remove any output it still wrote.
LATE_OUTPUT_SECONDS = 10.0

# The forkserver's only preload: the image code, and no re-import of the server (see there).
WORKER_PRELOAD = "imagegate.uploader.workerboot"


def worker_context() -> Any:
    """forkserver: workers start from a clean process, not a fork of a running event loop;
    that process holds only the image code (``WORKER_PRELOAD``), so a worker starts in a fork's
    time. The preload is set before the forkserver's first start (later calls change nothing
    while it runs: one forkserver serves every pool of the process)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([WORKER_PRELOAD])
    return context


class CodecPool:
    def __init__(
        self,
        workers: int,
        timeout: float,
        limits: Limits,
        quality: Quality,
        cache_mib: int,
        budget: Budget | None = None,
        memory_mib: int = 0,
        recycle_mib: int = 0,
        nice: int = 0,
    ) -> None:
        self._workers = workers
        self._timeout = timeout
        self._limits = limits
        self._quality = quality
        self._budget = budget or Budget(1.0, min(5.0, timeout), timeout)
        self._ready = self._broken = False
        self._stopped: set[int] = set()  # workers signalled SIGSTOP since the last SIGCONT
        self._warming: asyncio.Task[None] | None = None
        self._pool: Any = ProcessPool(  # pebble ships no type hints
            max_workers=workers,
            initializer=init_worker,
            initargs=(limits, cache_mib, memory_mib, recycle_mib, nice),
            context=worker_context(),
        )

    @classmethod
    def from_settings(cls, s: Settings, *, variants: bool = False) -> CodecPool:
        """The pool ``s`` describes: worker count, limits, budgets, quality, block cache.
        ``variants``: the pool that makes variants — its own workers (variant_workers) at a
        lower CPU priority, so that uploads never wait for them."""
        return cls(
            workers=s.variant_workers if variants else s.codec_workers,
            nice=VARIANT_NICE if variants else 0,
            timeout=s.codec_timeout_seconds,
            limits=Limits(
                s.image_max_pixels, s.image_max_side, s.image_max_frames, s.image_max_scans
            ),
            quality=Quality(s.jpeg_quality, s.webp_quality, s.avif_quality),
            cache_mib=s.codec_cache_mib,
            budget=Budget(
                s.codec_seconds_per_megapixel,
                min(s.codec_min_seconds, s.codec_timeout_seconds),
                s.codec_timeout_seconds,
            ),
            memory_mib=s.codec_memory_mib,
            recycle_mib=s.codec_recycle_mib,
        )

    async def warm(self) -> None:
        """Start every worker now, so the first uploads do not pay for process start-up."""
        futures = [self._pool.schedule(warm_up) for _ in range(self._workers)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        self._ready = True

    def warm_in_background(self) -> None:
        """Start every worker while the server already answers: ``ready`` once they all run
        (readiness, /healthz, waits for it). An upload meanwhile waits for a worker, as any
        upload does when all are busy."""
        self._warming = asyncio.get_running_loop().create_task(self._warm_logged())

    async def _warm_logged(self) -> None:
        started = time.monotonic()
        try:
            await self.warm()
        except Exception as exc:  # the pool is broken: not ready, and the log says why
            self._broken = True
            log.error("codec workers did not start: %r", exc)
            return
        log.info("%d codec workers ready in %.2f s", self._workers, time.monotonic() - started)

    @property
    def ready(self) -> bool:
        """Every worker has started (see ``warm``)."""
        return self._ready

    @property
    def health(self) -> str:
        """For /healthz: "ok" once every worker runs, "starting" before, "unavailable" when
        they could not be started."""
        return "ok" if self._ready else "unavailable" if self._broken else "starting"

    async def process(self, src: Path, dst: Path) -> Processed:
        """Run the image pipeline on ``src``. Capacity is decided before an upload's body is
        read (uploader/admission.py), so here every job waits for a worker."""
        with _pool_failures():
            future = self._pool.schedule(
                process_image,
                args=(str(src), str(dst), self._limits, self._quality, self._budget),
                timeout=self._timeout,
            )
        try:
            with _pool_failures():
                return await asyncio.wrap_future(future)
        except ImageRejected as exc:
            raise AppError(exc.message, status=exc.status) from None
        except FutureTimeout as exc:
            raise Unprocessable(f"image took longer than {self._timeout:g} s to process") from exc
        except ProcessExpired as exc:
            raise Unprocessable("image could not be processed (the decoder crashed)") from exc
        except asyncio.CancelledError:
            future.cancel()  # pebble stops the worker running it
            # ...but not at once: a worker in its last step may still write ``dst`` after
            # the caller removed it (seen: a bench run's cut-off uploads left .out files).
            asyncio.get_running_loop().call_later(
                LATE_OUTPUT_SECONDS, functools.partial(dst.unlink, missing_ok=True)
            )
            raise

    async def render_variants(
        self,
        src: Path,
        out_dir: Path,
        jobs: Sequence[VariantJob],
        pixels: int,
        *,
        background: bool = False,
    ) -> list[Rendered]:
        """Make ``jobs`` from the stored original at ``src`` into ``out_dir`` (variants/render.py).
        ``pixels`` is the original's width x height x frames: it sizes the CPU budget as for an
        upload; ``background``: nobody waits for it (a longer hard timeout, see above). A call
        that fails or is given up on leaves no file behind."""
        token = secrets.token_hex(8)  # names this call's files, for the clean-up below
        timeout = self._timeout * (BACKGROUND_WALL_STRETCH if background else 1)
        with _pool_failures():
            future = self._pool.schedule(
                render_variants,
                args=(
                    str(src),
                    str(out_dir),
                    tuple(jobs),
                    self._quality,
                    self._budget.seconds(pixels),
                    token,
                ),
                timeout=timeout,
            )

        def remove_output() -> None:
            for path in out_dir.glob(f"{token}.*"):
                path.unlink(missing_ok=True)

        try:
            with _pool_failures():
                return await asyncio.wrap_future(future)
        except ImageRejected as exc:
            raise AppError(exc.message, status=exc.status) from None
        except FutureTimeout as exc:
            remove_output()  # pebble stopped the worker, perhaps mid-write
            raise Unprocessable(f"image variants took longer than {timeout:g} s to make") from exc
        except ProcessExpired as exc:
            remove_output()
            raise Unprocessable("image variants could not be made (the decoder crashed)") from exc
        except asyncio.CancelledError:
            future.cancel()
            asyncio.get_running_loop().call_later(LATE_OUTPUT_SECONDS, remove_output)
            raise

    def signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every worker process now (variants/yielding.py stops and
        continues the variant workers). pebble has no call for it: its worker table is read,
        and a pebble without one gets no signal (tests/unit/test_yielding.py notices). A
        continue also reaches the workers stopped earlier that pebble has since taken out of
        its table to end them: a stopped process cannot act on pebble's SIGTERM."""
        manager = getattr(self._pool, "_pool_manager", None)
        workers = getattr(getattr(manager, "worker_manager", None), "workers", {})
        pids = set(tuple(workers))  # one C-level copy: the manager thread may add or remove
        if signum == signal.SIGSTOP:
            self._stopped |= pids
        elif signum == signal.SIGCONT:
            pids |= self._stopped
            self._stopped = set()
        for pid in pids:
            # Gone, or (its pid reused meanwhile) someone else's: nothing to do either way.
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    def close(self) -> None:
        self.signal_workers(signal.SIGCONT)  # a stopped worker would not finish or exit
        if self._warming is not None:
            self._warming.cancel()
        self._pool.close()
        self._pool.join(timeout=10)
        self._pool.stop()


@contextlib.contextmanager
def _pool_failures() -> Iterator[None]:
    """A pool whose workers cannot start (their initializer fails: a memory ceiling the
    process may not set, an image library that does not load) refuses every job: a 503 that
    says so, not a 500 per upload. /healthz reports it as ``codec: unavailable``."""
    try:
        yield
    except (RuntimeError, BrokenProcessPool) as exc:
        log.error("codec pool failed: %r", exc)
        raise Unavailable("image processing is unavailable; try again later", 5) from exc
