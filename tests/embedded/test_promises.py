"""README promises only a real embedded server can show: rehash on login, token expiry over
HTTP, a client aborting mid-upload, and a SIGTERM whose grace runs out mid-upload."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import register_and_login
from tests.support import images
from tests.support.bodies import HeldBody
from tests.support.server import ServerProcess


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _stored_hash(data_dir: Path, login: str) -> str:
    with contextlib.closing(sqlite3.connect(data_dir / "imagegate.db")) as db:
        row = db.execute("SELECT password_hash FROM users WHERE login = ?", (login,)).fetchone()
    assert row is not None, login
    return str(row[0])


def _leftovers(data_dir: Path) -> tuple[list[str], list[str], int]:
    """Files in images/ and tmp/, and image records: all empty after a refused upload."""
    files = sorted(p.name for p in (data_dir / "images").iterdir() if not p.name.startswith("."))
    tmp = sorted(p.name for p in (data_dir / "tmp").iterdir())
    with contextlib.closing(sqlite3.connect(data_dir / "imagegate.db")) as db:
        records = int(db.execute("SELECT count(*) FROM images").fetchone()[0])
    return files, tmp, records


def test_password_is_rehashed_on_login_when_argon2_parameters_rise(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, args=()).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            account = register_and_login(c)
    finally:
        server.stop()
    old = _stored_hash(data_dir, account.login)
    assert old.startswith("$argon2id$") and ",t=2," in old, old

    stronger = ServerProcess(
        data_dir, args=(), env={"IMAGEGATE_ARGON2_TIME_COST": "3"}, port=server.port
    ).start()
    try:
        with httpx.Client(base_url=stronger.base_url, timeout=30) as c:
            credentials = {"login": account.login, "password": account.password}
            assert c.post("/v1/token", json=credentials).status_code == 200
            new = _stored_hash(data_dir, account.login)
            assert new != old
            assert new.startswith("$argon2id$") and ",t=3," in new, new
            # The new hash still verifies the same password, and is not rehashed again.
            assert c.post("/v1/token", json=credentials).status_code == 200
            assert _stored_hash(data_dir, account.login) == new
            wrong = {"login": account.login, "password": account.password + "x"}
            assert c.post("/v1/token", json=wrong).status_code == 401
            assert _stored_hash(data_dir, account.login) == new
    finally:
        stronger.stop()


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


def test_tokens_expire_over_http(tmp_path: Path) -> None:
    ttl = 2
    server = ServerProcess(
        tmp_path / "data",
        env={"IMAGEGATE_TOKEN_TTL_SECONDS": str(ttl), "IMAGEGATE_TOKEN_LEEWAY_SECONDS": "0"},
    ).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            issued = time.time()
            r = c.post(
                "/v1/token",
                json={"login": "bob", "password": "qwe123"},
                headers={"Accept": "application/json"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["expires_in"] == ttl
            token = r.json()["access_token"]
            claims = _claims(token)
            assert claims["exp"] == int(str(claims["iat"])) + ttl
            auth = {"Authorization": f"Bearer {token}"}
            first = c.get("/v1/user", headers=auth)
            if time.time() < float(str(claims["exp"])) - 0.5:  # surely still valid: must work
                assert first.status_code == 200, first.text
            # Poll for the expiry itself, bounded: it must come, and not before `exp`.
            deadline = time.monotonic() + ttl + 15
            while (r := c.get("/v1/user", headers=auth)).status_code == 200:
                assert time.monotonic() < deadline, "the token never expired"
                time.sleep(0.1)
            assert time.time() >= float(str(claims["exp"])) - 1  # 1 s: exp is whole seconds
            assert time.time() - issued >= 0.5
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert r.json()["error"]
            for method, path in (("GET", "/v1/images"), ("GET", "/v1/token/validation")):
                assert c.request(method, path, headers=auth).status_code == 401
            up = c.post("/v1/upload", content=images.jpeg(16, 16), headers=auth)
            assert up.status_code == 401
    finally:
        server.stop()


def test_a_client_aborting_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            account = register_and_login(c)
        data = images.jpeg(1600, 1200)
        head = (
            f"POST /v1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {account.token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        tmp = server.data_dir / "tmp"
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(head + data[: len(data) // 2])
            # The server has started storing the body: the abort below cuts a real upload.
            _wait_until(lambda: any(p.stat().st_size for p in tmp.iterdir()), "the body in tmp/")
        _wait_until(lambda: _leftovers(server.data_dir) == ([], [], 0), "the clean-up")
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            info = c.get("/v1/user", headers=account.auth).json()
            assert (info["images"], info["bytes"]) == (0, 0)
            ok = c.post("/v1/upload", content=data, headers=account.auth)  # still serving
            assert ok.status_code == 201
    finally:
        server.stop()


def test_an_upload_cut_short_by_the_shutdown_grace_leaves_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"IMAGEGATE_SHUTDOWN_GRACE_SECONDS": "1"}).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            token = register_and_login(c).token
    except BaseException:
        server.kill()
        raise
    body = HeldBody(images.jpeg(1600, 1200))
    outcome: list[object] = []

    def send() -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=60) as c:
                r = c.post("/v1/upload", content=body, headers={"Authorization": f"Bearer {token}"})
                outcome.append(r.status_code)
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    sender = threading.Thread(target=send)
    sender.start()
    tmp = server.data_dir / "tmp"
    try:
        _wait_until(lambda: any(p.stat().st_size for p in tmp.iterdir()), "the body in tmp/")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # The body never completes: the grace (1 s) runs out and the process exits anyway.
        server.process.wait(60)
    finally:
        body.release.set()
        sender.join(60)
        server.kill()
    assert outcome and outcome[0] != 201, outcome
    # Before any restart (start-up would clean): nothing was left by the process itself.
    assert _leftovers(server.data_dir) == ([], [], 0)
