"""Uploads first: a process's variant workers stop while its uploads are in progress.

The idle scheduling class (uploader/process.py) gives uploads the CPU, but not the rest of the
machine: on two cores, variants encoded on the other core (AVIF and WebP are memory-heavy)
made uploads' p50 4-7 % slower, and a loop copying big arrays there 20-25 %, while a plain CPU
loop cost them nothing (docs/performance.md). So while at least one upload holds a place
(uploader/admission.py), the variant workers are stopped (SIGSTOP) and continued (SIGCONT)
when none does — never for long: ``max_pause`` into a streak of uploads they run ``min_run``
however busy uploads are (the gaps between one client's uploads do not restart that clock),
so variants still progress (at a fifth of their speed or more) under a steady upload stream,
and at full speed between uploads. While a variant someone waits for is being made (on
demand), nothing is stopped. Workers' budgets count CPU time, which a stopped worker does not
use; their parent's death kills them, stopped or not (process.die_with_parent).

Every upload holding a place counts, from its first body byte to its record: the whole of
what its client waits for. So a slow upload (a client sending slowly) also holds variants to a
fifth of their speed while it lasts — never to nothing. Workers pebble starts during a pause
(a replacement) run until the next stop, at most ``max_pause`` later.

Single-threaded by design: every method runs on the event loop.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import Counter

# 0.4 s stopped, then 0.1 s running: under a steady stream of uploads at most a fifth of them
# overlaps variant work, so their median does not move (their p99 may), and the variant
# workers still get a fifth of the time they would have.
MAX_PAUSE_SECONDS = 0.4
MIN_RUN_SECONDS = 0.1


class Signalled(Protocol):
    """What can be stopped: a pool of worker processes (uploader/pool.CodecPool)."""

    def signal_workers(self, signum: int) -> None: ...


class UploadsFirst:
    """Stops the pools ``add``-ed to it while ``uploads`` says some are in progress (see the
    module doc). ``enabled`` False: it never stops anything."""

    def __init__(
        self,
        enabled: bool,
        paused_seconds: Counter | None = None,
        *,
        max_pause: float = MAX_PAUSE_SECONDS,
        min_run: float = MIN_RUN_SECONDS,
    ) -> None:
        self._enabled = enabled
        self._counter = paused_seconds
        self._max_pause = max_pause
        self._min_run = min_run
        self._pools: list[Signalled] = []
        self._uploads = 0
        self._urgent = 0
        self._running_out = False  # in a forced ``min_run`` window
        self._stopped_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def paused(self) -> bool:
        """The pools' workers are stopped now."""
        return self._stopped_at is not None

    def add(self, pool: Signalled) -> None:
        """Stop ``pool`` too while uploads are in progress (from now on)."""
        self._pools.append(pool)
        self._update()

    def uploads(self, in_progress: int) -> None:
        """The number of uploads holding a place now (Admission calls it on every change)."""
        self._uploads = in_progress
        self._update()

    @contextmanager
    def urgent(self) -> Iterator[None]:
        """Inside: someone waits for the variant workers, so they are not stopped."""
        self._urgent += 1
        self._update()
        try:
            yield
        finally:
            self._urgent -= 1
            self._update()

    def close(self) -> None:
        """Continue every stopped worker and stop deciding."""
        self._enabled = False
        self._update()
        self._cancel_timer()

    def _update(self) -> None:
        stop = (
            self._enabled
            and bool(self._pools)
            and self._uploads > 0
            and self._urgent == 0
            and not self._running_out
        )
        if stop and not self.paused:
            self._stop()
        elif not stop and self.paused:
            self._continue()

    def _stop(self) -> None:
        loop = asyncio.get_running_loop()  # before any signal: no loop, nothing stopped
        self._stopped_at = time.monotonic()
        for pool in self._pools:
            pool.signal_workers(signal.SIGSTOP)
        if self._timer is None:
            # A streak of uploads begins. Its clock runs on through the gaps between them: one
            # client's uploads back to back leave the workers a millisecond each, not a turn.
            self._timer = loop.call_later(self._max_pause, self._run_out)

    def _continue(self) -> None:
        assert self._stopped_at is not None
        for pool in self._pools:
            pool.signal_workers(signal.SIGCONT)
        if self._counter is not None:
            self._counter.inc(time.monotonic() - self._stopped_at)
        self._stopped_at = None

    def _run_out(self) -> None:
        """``max_pause`` into a streak of uploads: the workers run ``min_run`` whatever comes."""
        self._running_out = True
        self._timer = asyncio.get_running_loop().call_later(self._min_run, self._ran)
        self._update()

    def _ran(self) -> None:
        self._timer = None  # the streak is over; uploads still in progress start the next
        self._running_out = False
        self._update()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
