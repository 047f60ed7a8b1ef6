"""The server's log handler (logs.BufferedStreamHandler): routine lines (the access log's) are
written in batches a bounded time later; anything else at once, after what waited, in order."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest

from imagegate import logs
from imagegate.logs import KEY_ATTR, BufferedStreamHandler


class CountingStream(io.StringIO):
    """A text stream that counts its writes."""

    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("test.log_buffer")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_routine_lines_wait_and_leave_together_within_the_interval(
    logger: logging.Logger,
) -> None:
    stream = CountingStream()
    logger.addHandler(BufferedStreamHandler(stream, interval=0.05))
    for i in range(50):
        logger.info("GET %d", i)
    assert lines(stream) == []  # waiting: nothing written per line
    deadline = time.monotonic() + 10
    while len(lines(stream)) < 50:
        assert time.monotonic() < deadline, "the buffer was never written"
        time.sleep(0.01)
    assert lines(stream) == [f"GET {i}" for i in range(50)]
    assert stream.writes == 1


def test_anything_else_is_written_at_once_after_what_waited(logger: logging.Logger) -> None:
    stream = CountingStream()
    handler = BufferedStreamHandler(stream, interval=3600)
    logger.addHandler(handler)
    logger.info("first")
    logger.warning("a warning")
    assert lines(stream) == ["first", "a warning"]
    logger.info("second")
    logger.info("refused", extra={KEY_ATTR: (429, "POST", "/v1/token")})  # a flood's kind
    assert lines(stream) == ["first", "a warning", "second", "refused"]
    logger.info("third")
    handler.flush()  # (logging's shutdown flushes and closes every handler)
    assert lines(stream)[-1] == "third"


def test_the_buffer_is_bounded_in_bytes(logger: logging.Logger) -> None:
    stream = CountingStream()
    logger.addHandler(BufferedStreamHandler(stream, interval=3600, limit=1000))
    for i in range(100):
        logger.info("line %03d %s", i, "x" * 90)  # 100 characters with the newline
    written = lines(stream)
    assert 90 <= len(written) <= 100 and stream.writes == len(written) // 10
    assert written == [f"line {i:03d} {'x' * 90}" for i in range(len(written))]


def test_install_makes_the_root_stream_handler_buffered_with_its_format() -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    stream = io.StringIO()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [plain]
    try:
        flood = logs.install()
        [handler] = root.handlers
        assert isinstance(handler, BufferedStreamHandler) and handler.stream is stream
        assert flood in handler.filters
        record = logging.LogRecord("imagegate.access", logging.INFO, "", 0, "hello", (), None)
        record.created = time.mktime((2026, 11, 30, 12, 0, 5, 0, 0, -1)) + 0.25
        record.msecs = 250.0
        assert handler.format(record) == "2026-11-30 12:00:05,250 INFO imagegate.access: hello"
        flood.close()
        handler.close()
    finally:
        root.handlers = saved
