"""The storage interface every backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    modified: float  # epoch seconds
    public: bool


class Storage(Protocol):
    """Durable, named image bytes. Names are already validated ``<uuid>.<ext>`` strings;
    ``public`` says which side of the public/private divide an object lives on."""

    async def put(self, name: str, source: Path, *, public: bool, content_type: str) -> None:
        """Store the finished file at ``source`` under ``name``; durable when this returns."""

    async def put_many(self, files: Sequence[tuple[str, Path, str]], *, public: bool) -> None:
        """``put`` for each ``(name, source, content_type)``, all durable when this returns;
        if it raises, any of them may be stored."""

    async def delete(self, name: str, *, public: bool) -> None:
        """Remove ``name``; removing a missing object is not an error."""

    # False when both sides are one place (visibility lives only in the database).
    separates_visibility: bool

    async def copy_to(self, names: Sequence[str], *, public: bool) -> None:
        """Copy each object to the ``public`` side from the other one (a visibility change);
        one found only there already (a retried change) is left as it is."""

    async def delete_many(self, objects: Sequence[tuple[str, bool]]) -> None:
        """Remove every ``(name, public)`` of ``objects`` (missing ones are not an error);
        raises OSError if any could not be removed — the others may be gone already."""

    async def exists(self, name: str, *, public: bool) -> bool:
        """Whether ``name`` is stored on that side."""

    async def health(self) -> None:
        """Raise if the backend cannot be written and read right now."""

    def list(self) -> AsyncIterator[StoredObject]:
        """Every stored object (for reconciling with the database)."""

    def local_path(self, name: str) -> Path | None:
        """A file this process can send directly, if the backend keeps one."""

    def signed_path(self, name: str, *, public: bool, head: bool = False) -> str | None:
        """A short-lived signed path and query that fetches the object from the backend's
        endpoint (for a gateway's X-Accel-Redirect), if the backend has one."""

    def stream(self, name: str, *, public: bool) -> AsyncIterator[bytes]:
        """The object's bytes, in chunks."""
