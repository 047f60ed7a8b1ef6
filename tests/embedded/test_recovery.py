"""Embedded mode across crashes and shutdowns: storage and database always agree."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import register_and_login
from tests.support import images
from tests.support.bodies import HeldBody
from tests.support.server import ServerProcess


def _check_consistent(data_dir: Path) -> int:
    # ``with`` a connection commits but does not close it: closing() does, so the file is free.
    with contextlib.closing(sqlite3.connect(data_dir / "imagegate.db")) as db:
        images = dict(db.execute("SELECT name, sha256 FROM images").fetchall())
        variants = dict(db.execute("SELECT name, sha256 FROM variants").fetchall())
    records = {**images, **variants}
    files = {p.name: p for p in (data_dir / "images").iterdir() if not p.name.startswith(".")}
    assert set(records) == set(files), set(records) ^ set(files)
    for name, sha in records.items():
        assert hashlib.sha256(files[name].read_bytes()).hexdigest() == sha
    assert list((data_dir / "tmp").iterdir()) == []
    return len(images)


def assert_consistent(data_dir: Path, settle_seconds: float = 60) -> int:
    """Every record — image or variant — has its bytes (same sha256), every file has its
    record, no temp files; returns the image count. Variants are made in the background after
    each upload, so a running server gets ``settle_seconds`` to finish what it is making."""
    deadline = time.monotonic() + settle_seconds
    while True:
        try:
            return _check_consistent(data_dir)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


Reply = tuple[int, dict[str, str] | None]  # status (-1: no answer) and the 201 body


def _hammer(base_url: str, token: str, seed: int, stop: threading.Event, out: list[Reply]) -> None:
    data = images.jpeg(1600, 1200, seed=seed)
    with httpx.Client(base_url=base_url, timeout=30) as c:
        while not stop.is_set():
            # Each upload its own bytes (a tail after the JPEG's end): the same bytes again
            # would be the same image (200), not a new one.
            body = data + os.urandom(16)
            try:
                r = c.post("/v1/upload", content=body, headers={"Authorization": f"Bearer {token}"})
                out.append((r.status_code, r.json() if r.status_code == 201 else None))
            except httpx.HTTPError:
                out.append((-1, None))
                return


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _assert_served(base_url: str, acknowledged: dict[str, tuple[str, str]]) -> None:
    """Every upload ever answered 201 (name: sha256, owner's token) is there, byte for byte."""
    with httpx.Client(base_url=base_url, timeout=30) as c:
        for name, (sha, token) in acknowledged.items():
            r = c.get(f"/v1/user/{name}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, (name, r.status_code)
            assert hashlib.sha256(r.content).hexdigest() == sha, name


@pytest.mark.slow
def test_kill_9_during_uploads_leaves_storage_and_records_in_agreement(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    # Two clients per account: within the per-account admission limit, so that every
    # answer is a 201 until the kill.
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        tokens = [register_and_login(c).token for _ in range(3)]
    acknowledged: dict[str, tuple[str, str]] = {}  # every 201 of every round: sha256, token
    for round_ in range(3):
        stop = threading.Event()
        replies: dict[str, list[Reply]] = {t: [] for t in tokens}
        threads = [
            threading.Thread(
                target=_hammer,
                args=(server.base_url, tokens[i % 3], i, stop, replies[tokens[i % 3]]),
            )
            for i in range(6)
        ]
        for t in threads:
            t.start()
        # Kill after a number of completed uploads (more each round, so the kill lands at a
        # different point of the six pipelines), not after a number of seconds.
        wanted = 2 + 3 * round_
        _wait_until(
            lambda out=replies, n=wanted: sum(r[0] == 201 for v in out.values() for r in v) >= n,
            f"{wanted} uploads",
        )
        server.kill()  # SIGKILL, mid-upload: six clients keep the pipeline busy
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        statuses = {status for v in replies.values() for status, _ in v}
        assert statuses <= {201, -1}, statuses  # stored, or cut off by the kill
        for token, answers in replies.items():
            acknowledged |= {b["filename"]: (b["sha256"], token) for _, b in answers if b}
        server.start()  # same data dir: start-up cleans what the crash left
        records = assert_consistent(server.data_dir)
        assert records >= len(acknowledged)
        _assert_served(server.base_url, acknowledged)
    server.stop()


@pytest.mark.slow
def test_sigterm_finishes_in_flight_uploads(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        token = register_and_login(c).token
    bodies = [HeldBody(images.jpeg(1200, 900, seed=i)) for i in range(2)]
    replies: list[httpx.Response] = []

    def send(body: HeldBody) -> None:
        with httpx.Client(base_url=server.base_url, timeout=120) as c:
            replies.append(
                c.post("/v1/upload", content=body, headers={"Authorization": f"Bearer {token}"})
            )

    senders = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in senders:
        t.start()
    tmp = server.data_dir / "tmp"
    # Both uploads are in flight once the server has started writing both bodies to tmp/.
    _wait_until(lambda: len([p for p in tmp.iterdir() if p.stat().st_size]) >= 2, "two bodies")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    # New connections are refused while the in-flight uploads are still running.
    _wait_until(lambda: not _accepts(server.port), "the listener to close", timeout=30)
    assert server.process.poll() is None, "exited before its in-flight uploads finished"
    for b in bodies:
        b.release.set()
    for t in senders:
        t.join(120)
    # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM is a clean exit.
    assert server.process.wait(60) in (0, -signal.SIGTERM)
    assert [r.status_code for r in replies] == [201, 201], [r.text for r in replies]
    server.start()
    _assert_served(
        server.base_url, {r.json()["filename"]: (r.json()["sha256"], token) for r in replies}
    )
    server.stop()
    assert assert_consistent(server.data_dir) == 2


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_second_process_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "data").start()
    try:
        with pytest.raises(RuntimeError, match="another imagegate process"):
            ServerProcess(tmp_path / "data").start(timeout=30)
    finally:
        first.stop()
