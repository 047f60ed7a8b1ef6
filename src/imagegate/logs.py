"""Bounded log volume: a flood of similar lines becomes a few lines and one count.

A client can make the server log: every rejected request writes an access line, and a fault
it can trigger may write a warning each time. ``FloodFilter`` lets the first ``burst`` records of
each kind through in every ``interval`` seconds and counts the rest; when the interval is over it
writes one line "suppressed K similar log lines in the last N s: <example>". Nothing is lost
from the count, and the volume is at most ``burst + 1`` lines per kind per interval.

A record's kind is its ``flood_key`` attribute when it has one (the access log sets it for
rejections: status, method and route template); otherwise, for warnings and errors, its logger,
level and message template. Info and debug records without a key always pass: an access line
of a served request is not a flood symptom, and sampling it would lose the record of traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

BURST = 20
INTERVAL_SECONDS = 10.0
SUMMARY_ATTR = "flood_summary"
KEY_ATTR = "flood_key"
_MAX_KINDS = 4096  # kinds tracked at once; past it, finished windows are dropped


@dataclass
class _Window:
    start: float
    passed: int
    suppressed: int
    logger: str
    level: int
    example: str


class FloodFilter(logging.Filter):
    """Per kind of record: ``burst`` lines per ``interval`` seconds, then one summary line."""

    def __init__(
        self,
        burst: int = BURST,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        *,
        background: bool = True,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.background = background  # summaries also from a timer, when a flood simply stops
        self._windows: dict[Hashable, _Window] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    @staticmethod
    def kind(record: logging.LogRecord) -> Hashable | None:
        """The kind a record is counted under, or None when it is never sampled."""
        key = getattr(record, KEY_ATTR, None)
        if key is not None:
            return ("key", record.name, key)
        if record.levelno < logging.WARNING:
            return None
        return ("msg", record.name, record.levelno, str(record.msg))

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SUMMARY_ATTR, False):
            return True
        kind = self.kind(record)
        if kind is None:
            return True
        now = self.clock()
        ended: _Window | None = None
        with self._lock:
            window = self._windows.get(kind)
            if window is None or now - window.start >= self.interval:
                if window is not None and window.suppressed:
                    ended = window
                elif window is None and len(self._windows) >= _MAX_KINDS:
                    self._prune(now)
                self._windows[kind] = _Window(now, 1, 0, record.name, record.levelno, "")
                allow = True
            elif window.passed < self.burst:
                window.passed += 1
                allow = True
            else:
                if not window.suppressed:
                    window.example = _first_line(record)
                window.suppressed += 1
                allow = False
                self._schedule(window.start + self.interval - now)
        if ended is not None:
            self._summarize(ended, now)
        return allow

    def flush(self) -> None:
        """Write the summary of every finished interval that suppressed lines."""
        now = self.clock()
        with self._lock:
            self._timer = None
            ended = []
            pending = None
            for kind, window in list(self._windows.items()):
                if not window.suppressed:
                    continue
                if now - window.start >= self.interval:
                    ended.append(window)
                    del self._windows[kind]
                else:
                    left = window.start + self.interval - now
                    pending = left if pending is None else min(pending, left)
            if pending is not None:
                self._schedule(pending)
        for window in ended:
            self._summarize(window, now)

    def close(self) -> None:
        """Stop the timer (tests; the server process simply exits)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _schedule(self, delay: float) -> None:
        # Called with the lock held: one timer at a time, at the end of the earliest window.
        if self.background and self._timer is None:
            self._timer = threading.Timer(max(delay, 0.0) + 0.05, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def _prune(self, now: float) -> None:
        for kind, window in list(self._windows.items()):
            if not window.suppressed and now - window.start >= self.interval:
                del self._windows[kind]

    def _summarize(self, window: _Window, now: float) -> None:
        logging.getLogger(window.logger).log(
            window.level,
            "suppressed %d similar log lines in the last %.0f s; the first: %s",
            window.suppressed,
            min(now - window.start, 2 * self.interval),
            window.example,
            extra={SUMMARY_ATTR: True},
        )


def _first_line(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = str(record.msg)
    return message.splitlines()[0][:300] if message else ""


def install(handlers: list[logging.Handler] | None = None) -> FloodFilter:
    """Put one ``FloodFilter`` on these handlers (default: the root logger's)."""
    flood = FloodFilter()
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, FloodFilter) for f in handler.filters):
            handler.addFilter(flood)
    return flood
