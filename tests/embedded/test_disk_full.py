"""A full disk: uploads answer 507 and leave nothing half-written, while logins and reads go on.

The data dir is a small tmpfs mounted for the test (CI runs as root); a filler file leaves
exactly the free space each case needs, so each failure happens where the case says: before
the body is read (the free-space check), while the body is written to tmp/, or while the codec
worker writes the processed file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import register_and_login
from tests.embedded.test_recovery import assert_consistent
from tests.support import images
from tests.support.disk import small_tmpfs
from tests.support.rawhttp import metrics, wait_for
from tests.support.server import ServerProcess

MIB = 1024 * 1024
MARGIN = MIB  # the server's free-space margin (pipeline.FREE_SPACE_MARGIN)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "data", "24m") as mount_point:
        yield mount_point


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _leave_free(filler: Path, free: int) -> None:
    """Grow or shrink ``filler`` so that ``free`` bytes (to a page) stay free on its disk."""
    size = filler.stat().st_size if filler.exists() else 0
    target = size + _free(filler.parent) - free
    assert target >= 0, "the disk is too small for this case"
    with open(filler, "ab") as f:
        f.truncate(min(size, target))
        if target > size:
            os.posix_fallocate(f.fileno(), 0, target)
    assert abs(_free(filler.parent) - free) <= 2 * 4096


def _noise_png(width: int, height: int) -> bytes:
    """Noise does not compress: the processed file is about as large as the upload."""
    from PIL import Image

    return images.encode(Image.effect_noise((width, height), 60), "PNG", compress_level=1)


def _chunked(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 65536):
        yield data[i : i + 65536]


def _admitted(server: ServerProcess) -> float:
    return metrics(server.base_url)["imagegate_uploads_admitted"]


def test_disk_full_answers_507_leaves_nothing_and_reads_go_on(small_disk: Path) -> None:
    server = ServerProcess(small_disk, env={"IMAGEGATE_CODEC_WORKERS": "1"}).start()
    filler = small_disk / "filler"
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            user = register_and_login(c)
            stored = c.post("/v1/upload", content=images.jpeg(320, 240), headers=user.auth)
            assert stored.status_code == 201, stored.text
            url = stored.json()["url"]
            original = c.get(url).content
            records = assert_consistent(small_disk)
            noise = _noise_png(2000, 1500)
            assert len(noise) > 2 * MARGIN  # so that half of it plus the margin is short of it

            def refused(response: httpx.Response, case: str) -> None:
                assert response.status_code == 507, (case, response.text)
                assert response.json()["error"], case
                assert int(response.headers["Retry-After"]) > 0, case
                wait_for("the place to be given back", lambda: _admitted(server) == 0)
                assert assert_consistent(small_disk) == records, case

            # Full: refused before the body is read, known length or not.
            _leave_free(filler, 0)
            refused(c.post("/v1/upload", content=noise, headers=user.auth), "full")
            refused(
                c.post("/v1/upload", content=_chunked(noise), headers=user.auth), "full, chunked"
            )

            # Room for the margin but not the body (whose length is not declared): the write
            # to tmp/ fails midway, and the part written is removed.
            _leave_free(filler, MARGIN + len(noise) // 2)
            refused(c.post("/v1/upload", content=_chunked(noise), headers=user.auth), "receiving")

            # Room for the body but not the processed copy: the worker's write fails.
            _leave_free(filler, MARGIN + len(noise) + len(noise) // 4)
            assert _free(small_disk) < 2 * len(noise)
            refused(c.post("/v1/upload", content=_chunked(noise), headers=user.auth), "processing")

            # With the disk full, reads and logins go on.
            _leave_free(filler, 0)
            assert c.get(url).content == original
            me = c.get("/v1/user", headers=user.auth)
            assert me.status_code == 200 and me.json()["images"] == records
            listing = c.get("/v1/images", headers=user.auth)
            assert listing.status_code == 200 and len(listing.json()["items"]) == records
            login = c.post("/v1/token", json={"login": user.login, "password": user.password})
            assert login.status_code == 200, login.text

            # Space again: uploads work again.
            filler.unlink()
            again = c.post("/v1/upload", content=noise, headers=user.auth)
            assert again.status_code == 201, again.text
        assert assert_consistent(small_disk) == records + 1
    finally:
        server.stop()
