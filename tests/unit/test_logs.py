"""FloodFilter: a flood of similar log lines becomes ``burst`` lines and one count."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from imagegate.logs import KEY_ATTR, FloodFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def setup() -> Iterator[tuple[logging.Logger, Collect, FloodFilter, Clock]]:
    clock = Clock()
    flood = FloodFilter(burst=5, interval=10.0, clock=clock, background=False)
    handler = Collect()
    handler.addFilter(flood)
    logger = logging.getLogger("test.flood")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield logger, handler, flood, clock
    logger.removeHandler(handler)
    flood.close()


def test_a_flood_of_one_kind_is_bounded_and_counted(
    setup: tuple[logging.Logger, Collect, FloodFilter, Clock],
) -> None:
    logger, handler, flood, clock = setup
    for i in range(1000):
        logger.info("rejected %d", i, extra={KEY_ATTR: (429, "POST", "/v1/token")})
    assert handler.lines == [f"rejected {i}" for i in range(5)]
    clock.now += 10
    flood.flush()
    assert len(handler.lines) == 6
    assert handler.lines[-1].startswith("suppressed 995 similar log lines in the last 10 s")
    assert "rejected 5" in handler.lines[-1]  # the first one left out, as an example
    flood.flush()  # counted once
    assert len(handler.lines) == 6


def test_the_count_comes_with_the_next_line_when_no_flush_ran(
    setup: tuple[logging.Logger, Collect, FloodFilter, Clock],
) -> None:
    logger, handler, _, clock = setup
    for _ in range(8):
        logger.warning("database unavailable: %s", "refused")
    clock.now += 11
    logger.warning("database unavailable: %s", "refused")
    assert handler.lines[5].startswith("suppressed 3 similar log lines")
    assert handler.lines[6] == "database unavailable: refused"
    assert len(handler.lines) == 7


def test_kinds_are_counted_apart_and_info_without_a_key_always_passes(
    setup: tuple[logging.Logger, Collect, FloodFilter, Clock],
) -> None:
    logger, handler, _, _ = setup
    for _ in range(50):
        logger.info("served %s", "GET /v1/user 200")  # a served request: never sampled
        logger.info("x", extra={KEY_ATTR: (429, "POST", "/v1/token")})
        logger.info("x", extra={KEY_ATTR: (413, "POST", "/v1/token")})
        logger.error("unhandled error on %s", "/v1/user")
    assert handler.lines.count("served GET /v1/user 200") == 50
    assert handler.lines.count("x") == 10  # 5 of each key
    assert handler.lines.count("unhandled error on /v1/user") == 5


def test_an_unsampled_flush_writes_nothing(
    setup: tuple[logging.Logger, Collect, FloodFilter, Clock],
) -> None:
    logger, handler, flood, clock = setup
    for _ in range(5):
        logger.warning("five is the burst")
    clock.now += 60
    flood.flush()
    assert handler.lines == ["five is the burst"] * 5
