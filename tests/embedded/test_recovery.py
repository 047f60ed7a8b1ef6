"""Embedded mode across crashes and shutdowns: storage and database always agree."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import register_and_login
from tests.support import images
from tests.support.server import ServerProcess


def assert_consistent(data_dir: Path) -> int:
    """Every record has its bytes (same sha256), every file has its record, no temp files."""
    with sqlite3.connect(data_dir / "imagegate.db") as db:
        records = dict(db.execute("SELECT name, sha256 FROM images").fetchall())
    files = {p.name: p for p in (data_dir / "images").iterdir() if not p.name.startswith(".")}
    assert set(records) == set(files), set(records) ^ set(files)
    for name, sha in records.items():
        assert hashlib.sha256(files[name].read_bytes()).hexdigest() == sha
    assert list((data_dir / "tmp").iterdir()) == []
    return len(records)


def _hammer(base_url: str, token: str, stop: threading.Event, results: list[int]) -> None:
    data = images.jpeg(1600, 1200, seed=len(results))
    with httpx.Client(base_url=base_url, timeout=30) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/upload", content=data, headers={"Authorization": f"Bearer {token}"})
                results.append(r.status_code)
            except httpx.HTTPError:
                results.append(-1)
                return


@pytest.mark.slow
def test_kill_9_during_uploads_leaves_storage_and_records_in_agreement(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        token = register_and_login(c).token
    for round_ in range(3):
        stop, results = threading.Event(), []
        threads = [
            threading.Thread(target=_hammer, args=(server.base_url, token, stop, results))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5 + round_ * 0.37)
        server.kill()  # SIGKILL, mid-upload
        stop.set()
        for t in threads:
            t.join(30)
        assert results.count(201) > 0
        server.start()  # same data dir: start-up cleans what the crash left
        assert assert_consistent(server.data_dir) >= results.count(201)
    server.stop()


@pytest.mark.slow
def test_sigterm_finishes_in_flight_uploads(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        token = register_and_login(c).token
    data = images.encode(images.photo(3000, 2000), "PNG")  # seconds of PNG optimization
    replies: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            replies.append(
                c.post("/v1/upload", content=data, headers={"Authorization": f"Bearer {token}"})
            )

    senders = [threading.Thread(target=send) for _ in range(2)]
    for t in senders:
        t.start()
    time.sleep(1.0)
    # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM is a clean exit.
    assert server.stop(signal.SIGTERM, timeout=60) in (0, -signal.SIGTERM)
    for t in senders:
        t.join(60)
    assert [r.status_code for r in replies] == [201, 201]
    server.start()
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        for r in replies:
            got = c.get(r.json()["url"])
            assert hashlib.sha256(got.content).hexdigest() == r.json()["sha256"]
    server.stop()
    assert assert_consistent(server.data_dir) == 2


def test_second_process_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "data").start()
    try:
        with pytest.raises(RuntimeError, match="another imagegate process"):
            ServerProcess(tmp_path / "data").start(timeout=30)
    finally:
        first.stop()
