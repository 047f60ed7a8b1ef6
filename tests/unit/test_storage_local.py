"""The local folder storage's batch put: every file moved into place, durable, at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from imagegate.storage.local import LocalStorage


def test_put_many_moves_every_file_into_place(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images")
    work = tmp_path / "work"
    work.mkdir()
    files = []
    for n in range(3):
        source = work / f"v{n}.tmp"
        source.write_bytes(f"variant {n}".encode())
        files.append((f"name-{n}.webp", source, "image/webp"))
    asyncio.run(storage.put_many(files, public=True))
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "name-0.webp",
        "name-1.webp",
        "name-2.webp",
    ]
    assert (tmp_path / "images" / "name-1.webp").read_bytes() == b"variant 1"
    assert not any(work.iterdir()), "the sources are moved, not copied"


def test_put_many_raises_on_a_missing_source(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images")
    source = tmp_path / "a.tmp"
    source.write_bytes(b"a")
    files = [("a.png", source, "image/png"), ("b.png", tmp_path / "gone.tmp", "image/png")]
    with pytest.raises(FileNotFoundError):
        asyncio.run(storage.put_many(files, public=False))
    # What was stored before the failure may stay; its caller removes it (maker._store).
    assert not (tmp_path / "images" / "b.png").exists()
