"""When the storage cannot be written: 503 with a clear error, no record, and recovery after."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from tests.conftest import register_and_login
from tests.embedded.test_recovery import assert_consistent
from tests.support import images
from tests.support.server import ServerProcess


def test_storage_unavailable_gives_503_and_leaves_no_record(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            account = register_and_login(c)
            folder = server.data_dir / "images"
            shutil.rmtree(folder)
            folder.write_bytes(b"not a folder any more")  # writes into it now fail

            health = c.get("/healthz")
            assert health.status_code == 503
            assert health.json()["checks"]["storage"] == "unavailable"
            r = c.post("/v1/upload", content=images.jpeg(64, 64), headers=account.auth)
            assert r.status_code == 503
            assert "storage" in r.json()["error"]
            assert int(r.headers["Retry-After"]) > 0
            assert c.get("/v1/user", headers=account.auth).json()["images"] == 0

            folder.unlink()
            folder.mkdir()
            assert c.get("/healthz").status_code == 200
            ok = c.post("/v1/upload", content=images.jpeg(64, 64), headers=account.auth)
            assert ok.status_code == 201
    finally:
        server.stop()
    assert assert_consistent(server.data_dir) == 1
