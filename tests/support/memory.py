"""Resident memory of a whole process tree (a server, its codec workers and their helpers),
sampled in a background thread, keeping the peak."""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

import psutil


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every descendant alive now (0 if ``pid`` is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # exited between the listing and the read
            total += process.memory_info().rss
    return total


class PeakRSS:
    """``with PeakRSS(pid) as m: ...`` then ``m.peak``: the largest tree RSS seen, in bytes.

    Sampling every ``interval`` seconds can miss a spike shorter than that; the worker memory
    ceiling (RLIMIT_AS) is what bounds those, this measures what the tree actually held."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self.pid))
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))
