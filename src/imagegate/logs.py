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

``install`` also makes the server's log handler cheaper per line, for the access log's sake
(one line per request): such lines (info and below, without a flood key) are buffered and
written at most ``FLUSH_SECONDS`` later (or once ``FLUSH_BYTES`` are waiting), in one write;
anything else is written at once, after the lines waiting before it, so the order holds. The
time stamp's text is made once a second. A line cost 25-45 µs with a write per line, about as
much as answering a small image.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TextIO

BURST = 20
INTERVAL_SECONDS = 10.0
SUMMARY_ATTR = "flood_summary"
KEY_ATTR = "flood_key"
_MAX_KINDS = 4096  # kinds tracked at once; past it, finished windows are dropped
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024


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


class _SecondsFormatter(logging.Formatter):
    """``logging.Formatter`` whose default time stamp text is made once per second."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        if not self.default_msec_format:
            return self._text
        return self.default_msec_format % (self._text, record.msecs)


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that buffers routine lines (info and below, without a flood key) for
    at most ``interval`` seconds or ``limit`` bytes, and writes anything else at once (after
    what is waiting). A daemon thread writes the buffer when the interval is over; ``flush``
    and ``close`` (logging's shutdown at exit) write it too."""

    def __init__(
        self, stream: TextIO, interval: float = FLUSH_SECONDS, limit: int = FLUSH_BYTES
    ) -> None:
        super().__init__(stream)
        self.interval = interval
        self.limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._due = threading.Event()
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if record.levelno > logging.INFO or getattr(record, KEY_ATTR, None) is not None:
                self._write_waiting()
                self.stream.write(line)
                self.stream.flush()
                return
            self._lines.append(line)
            self._size += len(line)
            if self._size >= self.limit:
                self._write_waiting()
                self.stream.flush()
            elif len(self._lines) == 1:
                self._wake_flusher()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # (created by Handler.__init__)
            self._write_waiting()
            super().flush()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write_waiting(self) -> None:
        # Called with the handler's lock held.
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            self.stream.write("".join(lines))

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="imagegate-log-flush", daemon=True
            )
            self._flusher.start()
        self._due.set()

    def _flush_loop(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.interval)
            self._due.clear()
            try:
                self.flush()
            except Exception:  # the stream is gone (closed at exit): nothing to write to
                return


def _buffered(handler: logging.Handler) -> logging.Handler:
    """The root's plain stream handler (``logging.basicConfig``'s) made a
    ``BufferedStreamHandler`` on the same stream, with the same level, filters and format;
    any other handler as it is."""
    if type(handler) is not logging.StreamHandler:
        return handler
    buffered = BufferedStreamHandler(handler.stream)
    buffered.setLevel(handler.level)
    for f in handler.filters:
        buffered.addFilter(f)
    formatter = handler.formatter
    if type(formatter) is logging.Formatter and isinstance(formatter._style, logging.PercentStyle):
        formatter = _SecondsFormatter(formatter._fmt, formatter.datefmt)
    buffered.setFormatter(formatter)
    return buffered


def install(handlers: list[logging.Handler] | None = None) -> FloodFilter:
    """Put one ``FloodFilter`` on these handlers (default: the root logger's, whose plain
    stream handler is made a ``BufferedStreamHandler`` first)."""
    flood = FloodFilter()
    if handlers is None:
        root = logging.getLogger()
        for i, handler in enumerate(root.handlers):
            replacement = _buffered(handler)
            if replacement is not handler:
                root.handlers[i] = replacement
                handler.close()
        handlers = root.handlers
    for handler in handlers:
        if not any(isinstance(f, FloodFilter) for f in handler.filters):
            handler.addFilter(flood)
    return flood
