"""Uploads first (variants/yielding.py): real variant workers stopped and continued."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from imagegate.settings import Settings
from imagegate.uploader.pool import CodecPool
from imagegate.variants import DEFAULT_PRESETS, VariantJob
from imagegate.variants.yielding import UploadsFirst
from tests.support import images

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux signals")


def state(pid: int) -> str:
    """The process's state letter (T: stopped), or "gone"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks after boot), telling a pid's reuse apart; None
    when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return None if fields[0] == "Z" else fields[19]


async def until(done: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        await asyncio.sleep(0.01)


async def started_pool() -> tuple[CodecPool, int]:
    # At nice 0: the tests control when the worker may run, not the machine's other load (a
    # variant pool's idle-class worker gets next to nothing of a busy machine).
    pool = CodecPool.from_settings(Settings(codec_workers=1))
    await pool.warm()
    workers = pool._pool._pool_manager.worker_manager.workers
    assert len(workers) == 1
    return pool, next(iter(workers))


def test_workers_stop_while_uploads_are_in_progress_and_not_while_someone_waits() -> None:
    async def run() -> None:
        pool, pid = await started_pool()
        paused = Counter("paused", "test", registry=CollectorRegistry())
        first = UploadsFirst(True, paused, max_pause=3600)
        try:
            first.add(pool)
            first.uploads(1)
            assert first.paused
            await until(lambda: state(pid) == "T", "stopped")
            first.uploads(2)
            first.uploads(1)
            assert state(pid) == "T"
            first.uploads(0)
            await until(lambda: state(pid) != "T", "continued")
            assert paused._value.get() > 0
            with first.urgent():  # an on-demand variant is being made
                first.uploads(1)
                assert not first.paused
            assert first.paused  # the wait is over: uploads come first again
            await until(lambda: state(pid) == "T", "stopped again")
            # Closing continues them; the pool closes as usual (its workers exit).
            first.close()
            assert not first.paused
            await until(lambda: state(pid) != "T", "continued at close")
            first.uploads(1)
            assert not first.paused  # closed: decides nothing any more
        finally:
            pool.close()
        await until(lambda: state(pid) in ("gone", "Z"), "worker exited")

    asyncio.run(run())


def test_a_steady_upload_stream_still_lets_variants_run_and_finish(tmp_path: Path) -> None:
    """Stopped at most ``max_pause``, then running ``min_run``: a job started under a stream
    of uploads that never ends, one after another, still finishes, with the same files."""
    src = tmp_path / "photo.jpg"
    src.write_bytes(images.jpeg(800, 600))
    out = tmp_path / "out"
    out.mkdir()
    jobs = [VariantJob(p.name, p.size, ("avif", "webp", "jpg")) for p in DEFAULT_PRESETS[:2]]

    async def run() -> None:
        pool, pid = await started_pool()
        first = UploadsFirst(True, max_pause=0.05, min_run=0.05)
        first.add(pool)
        states: set[str] = set()
        turns: set[bool] = set()  # ``paused`` right after an upload started
        try:
            job = asyncio.ensure_future(pool.render_variants(src, out, jobs, 800 * 600))
            deadline = time.monotonic() + 120
            while not job.done():
                assert time.monotonic() < deadline, "the variant job never got its turn"
                # One client's uploads back to back: a gap of no time between them, which
                # must not restart the clock that gives the workers their turn.
                first.uploads(0)
                first.uploads(1)
                turns.add(first.paused)
                now = state(pid)
                assert now != "gone"
                states.add("T" if now == "T" else "running")
                await asyncio.sleep(0.005)
            rendered = await job
        finally:
            first.close()
            pool.close()
        assert [(r.key, r.fmt) for r in rendered] == [
            (j.key, f) for j in jobs for f in ("avif", "webp", "jpg")
        ]
        assert all(Path(r.path).stat().st_size == r.bytes > 0 for r in rendered)
        assert turns == {True, False}  # uploads in progress all along, and yet its turns
        assert states == {"T", "running"}  # it was stopped and it ran

    asyncio.run(run())


_ORPHAN_SCRIPT = """
import asyncio, os, signal, sys
from imagegate.settings import Settings
from imagegate.uploader.pool import CodecPool

async def main():
    pool = CodecPool.from_settings(Settings(variant_workers=1), variants=True)
    await pool.warm()
    (pid,) = pool._pool._pool_manager.worker_manager.workers
    os.kill(pid, signal.SIGSTOP)
    print(pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind

asyncio.run(main())
"""


def test_a_stopped_worker_dies_with_its_server() -> None:
    """A server killed while its variant workers are stopped leaves no stopped process behind."""
    done = subprocess.run(
        [sys.executable, "-c", _ORPHAN_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout)
    started = start_time(pid)
    if started is None:
        return  # killed already

    async def gone() -> None:
        await until(lambda: start_time(pid) != started, "stopped worker killed")

    try:
        asyncio.run(gone())
    finally:
        if start_time(pid) == started:  # still that worker (not a process reusing its pid)
            os.kill(pid, signal.SIGKILL)
