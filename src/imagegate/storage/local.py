"""Images as files in a local folder: written to a temp name, fsynced, then renamed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio.to_thread

from imagegate.storage.base import StoredObject


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHUNK = 256 * 1024


class LocalStorage:
    """One flat folder; visibility lives in the database, so ``public`` is not needed here."""

    separates_visibility = False

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _put_many(self, files: Sequence[tuple[str, Path, str]]) -> None:
        # The sources are written by us in the same data dir, so rename is atomic and cheap.
        for name, source, _ in files:
            with open(source, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(source, self.root / name)
        _fsync_dir(self.root)  # one directory sync for the whole batch

    async def put(self, name: str, source: Path, *, public: bool, content_type: str) -> None:
        await anyio.to_thread.run_sync(self._put_many, [(name, source, content_type)])

    async def put_many(self, files: Sequence[tuple[str, Path, str]], *, public: bool) -> None:
        # One thread call and one directory sync: a variant maker stores a dozen files while
        # it holds SQLite's write lock, and each put was a hop and a directory sync.
        await anyio.to_thread.run_sync(self._put_many, list(files))

    def _delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        _fsync_dir(self.root)

    async def delete(self, name: str, *, public: bool) -> None:
        await anyio.to_thread.run_sync(self._delete, name)

    async def copy_to(self, names: Sequence[str], *, public: bool) -> None:
        raise NotImplementedError("one folder for both sides: nothing moves")

    def _delete_many(self, names: list[str]) -> None:
        failed: OSError | None = None
        for name in names:
            try:
                (self.root / name).unlink(missing_ok=True)
            except OSError as exc:  # try the others, then report the first failure
                failed = failed or exc
        _fsync_dir(self.root)  # one directory sync for the whole batch
        if failed is not None:
            raise failed

    async def delete_many(self, objects: Sequence[tuple[str, bool]]) -> None:
        await anyio.to_thread.run_sync(self._delete_many, [name for name, _ in objects])

    async def exists(self, name: str, *, public: bool) -> bool:
        return await anyio.to_thread.run_sync((self.root / name).is_file)

    def _health(self) -> None:
        probe = self.root / f".health-{os.getpid()}"
        probe.write_bytes(b"ok")
        if probe.read_bytes() != b"ok":
            raise OSError("storage probe read back different bytes")
        probe.unlink()

    async def health(self) -> None:
        await anyio.to_thread.run_sync(self._health)

    async def list(self) -> AsyncIterator[StoredObject]:
        entries = await anyio.to_thread.run_sync(lambda: list(os.scandir(self.root)))
        for entry in entries:
            if entry.is_file() and not entry.name.startswith("."):
                st = entry.stat()
                yield StoredObject(entry.name, st.st_size, st.st_mtime, public=False)

    def local_path(self, name: str) -> Path | None:
        return self.root / name

    def signed_path(self, name: str, *, public: bool, head: bool = False) -> str | None:
        return None

    async def stream(self, name: str, *, public: bool) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self.root / name, "rb") as f:
            while chunk := await f.read(CHUNK):
                yield chunk
