"""The imagegate command: accounts from the CLI, HTTPS with a generated certificate."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx

from tests.support import images
from tests.support.cli import imagegate
from tests.support.server import ServerProcess


def test_user_add_list_delete(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    added = imagegate("user", "add", "Carol", "--data-dir", data, stdin="correct horse battery\n")
    assert added.returncode == 0, added.stderr
    assert "created carol" in added.stdout

    weak = imagegate("user", "add", "dave", "--data-dir", data, stdin="qwe123\n")
    assert weak.returncode != 0
    assert "at least 12" in weak.stderr

    taken = imagegate("user", "add", "CAROL", "--data-dir", data, stdin="another fine passphrase\n")
    assert taken.returncode != 0
    assert "taken" in taken.stderr

    listed = imagegate("user", "list", "--data-dir", data)
    assert listed.returncode == 0
    assert listed.stdout.startswith("carol\t")
    assert "dave" not in listed.stdout

    server = ServerProcess(tmp_path / "data", args=()).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            token = c.post(
                "/v1/token", json={"login": "carol", "password": "correct horse battery"}
            )
            assert token.status_code == 200
            auth = {"Authorization": f"Bearer {token.text}"}
            up = c.post("/v1/upload", content=images.jpeg(64, 64), headers=auth)
            assert up.status_code == 201
            # No --demo: the demo user does not exist.
            assert (
                c.post("/v1/token", json={"login": "bob", "password": "qwe123"}).status_code == 401
            )
        # The records go before the command returns; the running server removes the files.
        deleted = imagegate("user", "delete", "carol", "--data-dir", data)
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout.startswith("deleted carol and 1 image; the image files are removed")
        assert imagegate("user", "list", "--data-dir", data).stdout == ""
        deadline = time.monotonic() + 60
        while list((tmp_path / "data" / "images").iterdir()):
            assert time.monotonic() < deadline, "the server did not remove the files"
            time.sleep(0.05)
    finally:
        server.stop()


def test_tls_serves_https_with_a_generated_certificate(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", args=("--tls",), scheme="https").start()
    try:
        cert = tmp_path / "data" / "tls" / "cert.pem"
        assert cert.exists()
        assert (tmp_path / "data" / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
        r = httpx.get(server.base_url + "/status", verify=ssl.create_default_context(cafile=cert))
        assert r.json() == {"status": "OK"}
    finally:
        server.stop()
