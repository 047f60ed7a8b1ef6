"""The serving cache on its own: its bound in bytes, least recently used first out, and
entries that count only while the file is the one they were read from."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from imagegate.serving import SMALL_FILE_BYTES, ServeCache, _Entry, _small_file

KEY = (1, 2, 3, 4, 5)


def entry(size: int, key: tuple[int, int, int, int, int] = KEY) -> _Entry:
    return _Entry(key, b"x" * size, b"Mon, 30 Nov 2026 00:00:00 GMT")


def test_the_bound_holds_whatever_comes_in() -> None:
    cache = ServeCache(10_000)
    for i, size in enumerate([3_000, 4_000, 2_500, 9_999, 1, 6_000, 4_000, 10_000, 700] * 5):
        cache.put(f"n{i}", entry(size))
        assert cache.bytes <= 10_000
        assert cache.bytes == sum(len(e.data) for e in cache._entries.values())
    assert cache.evictions > 0


def test_an_entry_over_the_bound_is_not_kept() -> None:
    cache = ServeCache(1_000)
    cache.put("small", entry(600))
    cache.put("big", entry(1_001))
    assert cache.get("big", KEY) is None
    assert cache.get("small", KEY) is not None  # and it did not push out what was there


def test_least_recently_used_goes_first() -> None:
    cache = ServeCache(3_000)
    for name in ("a", "b", "c"):
        cache.put(name, entry(1_000))
    assert cache.get("a", KEY) is not None  # "b" is now the oldest
    cache.put("d", entry(1_000))
    assert cache.get("b", KEY) is None
    assert all(cache.get(n, KEY) is not None for n in ("a", "c", "d"))


def test_an_entry_counts_only_for_its_file() -> None:
    cache = ServeCache(10_000)
    cache.put("a", entry(100))
    assert cache.get("a", (1, 2, 3, 4, 6)) is None  # another change time: another file
    assert (cache.hits, cache.misses) == (0, 1)
    cache.put("a", entry(200, (9, 9, 9, 9, 9)))  # replaces, and the count follows
    assert cache.bytes == 200 and len(cache) == 1
    cache.discard("a")
    assert cache.bytes == 0 and len(cache) == 0


def test_small_files_are_read_again_once_changed(tmp_path: Path) -> None:
    cache = ServeCache(1 << 20)
    path = tmp_path / "f.png"

    def serve() -> bytes | None:
        got = asyncio.run(_small_file(path, "f.png", cache))
        return None if got is None else got.data

    path.write_bytes(b"first")
    assert serve() == b"first"
    assert serve() == b"first" and cache.hits == 1
    path.write_bytes(b"second, longer")  # in place: same inode, another size
    assert serve() == b"second, longer"
    replacement = tmp_path / "g.png"
    replacement.write_bytes(b"third, same len")  # same size as before, another inode
    os.replace(replacement, path)
    assert serve() == b"third, same len"
    path.unlink()
    assert serve() is None and len(cache) == 0  # gone: forgotten, and left to FileResponse
    path.write_bytes(b"x" * (SMALL_FILE_BYTES + 1))
    assert serve() is None and len(cache) == 0  # large: streamed, never cached
