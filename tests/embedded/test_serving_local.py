"""What only the embedded server shows: every ETag it sends is the image's sha256."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import register_and_login
from tests.support import images
from tests.support.server import ServerProcess


def test_public_and_owner_etags_are_the_sha256(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            account = register_and_login(c)
            body = c.post("/v1/upload", content=images.jpeg(64, 64), headers=account.auth).json()
            etag = f'"{body["sha256"]}"'
            assert c.get(body["url"]).headers["ETag"] == etag
            owner = c.get(f"/v1/user/{body['filename']}", headers=account.auth)
            assert owner.headers["ETag"] == etag
            assert c.get(body["url"], headers={"If-None-Match": etag}).status_code == 304
    finally:
        server.stop()
