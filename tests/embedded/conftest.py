"""Fixtures shared by the embedded tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def c(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client of the module's ``server`` (each module that uses it defines that fixture)."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client
