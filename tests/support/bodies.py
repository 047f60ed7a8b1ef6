"""Upload bodies that arrive the way a slow client sends them."""

from __future__ import annotations

import threading
from collections.abc import Iterator


class HeldBody:
    """An upload body sent in two halves: the second only once ``release`` is set."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        half = len(self.data) // 2
        yield self.data[:half]
        assert self.release.wait(120), "the test never released the second half"
        yield self.data[half:]
