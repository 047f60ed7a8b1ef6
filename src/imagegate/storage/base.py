"""The storage interface every backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    modified: float  # epoch seconds


class Storage(Protocol):
    """Durable, named image bytes. Names are already validated ``<uuid>.<ext>`` strings."""

    async def put(self, name: str, source: Path, *, public: bool) -> None:
        """Store the finished file at ``source`` under ``name``; durable when this returns."""

    async def delete(self, name: str) -> None:
        """Remove ``name``; removing a missing object is not an error."""

    async def health(self) -> None:
        """Raise if the backend cannot be written and read right now."""

    def list(self) -> AsyncIterator[StoredObject]:
        """Every stored object (for reconciling with the database)."""

    def local_path(self, name: str) -> Path | None:
        """A file the process can stream directly, if the backend keeps one."""
