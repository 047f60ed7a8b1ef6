"""The embedded server's cache of small images (``IMAGEGATE_SERVE_CACHE_MIB``): answers from it
are the file's current bytes, to a viewer the record allows, and it stays within its bound.

Each test first shows the image is served from the cache (the hit counter at /metrics moves),
so that what follows tests the cache, not a fresh read."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import Account, register_and_login
from tests.support.images import encode
from tests.support.server import ServerProcess

MIB = 2**20


def noise_png(side: int, seed: int) -> bytes:
    """Incompressible pixels: the stored file keeps about 3 bytes a pixel."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    return encode(Image.frombytes("RGB", (side, side), pixels), "PNG")


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not at /metrics")


def hits(client: httpx.Client) -> float:
    return metric(client, "imagegate_serve_cache_hits_total")


def upload(c: httpx.Client, account: Account, data: bytes, visibility: str = "public") -> dict:
    r = c.post("/v1/upload", content=data, params={"visibility": visibility}, headers=account.auth)
    assert r.status_code == 201, r.text
    body: dict = r.json()
    return body


def cached(c: httpx.Client, url: str, headers: dict[str, str] | None = None) -> bytes:
    """GET twice; the second answer must come from the cache. Returns the bytes."""
    first = c.get(url, headers=headers)
    assert first.status_code == 200
    before = hits(c)
    second = c.get(url, headers=headers)
    assert second.status_code == 200 and second.content == first.content
    assert hits(c) == before + 1
    return second.content


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("serving-cache") / "data"
    server = ServerProcess(data, env={"IMAGEGATE_SERVE_CACHE_MIB": "1"}).start()
    yield server
    server.stop()


def test_a_deleted_image_is_404_at_once(c: httpx.Client) -> None:
    account = register_and_login(c)
    image = upload(c, account, noise_png(40, 1))
    owner_url = f"/v1/user/{image['filename']}"
    cached(c, image["url"])
    cached(c, owner_url, account.auth)
    assert c.delete(f"/v1/images/{image['filename']}", headers=account.auth).status_code == 204
    for url, headers in ((image["url"], {}), (owner_url, account.auth)):
        for method in ("GET", "HEAD"):
            r = c.request(method, url, headers=headers)
            assert r.status_code == 404
        assert c.get(url, headers=headers).json() == {"error": "no such image"}


def test_a_deleted_account_s_images_are_404_at_once(c: httpx.Client) -> None:
    account = register_and_login(c)
    image = upload(c, account, noise_png(40, 2))
    cached(c, image["url"])
    r = c.request("DELETE", "/v1/user", json={"password": account.password}, headers=account.auth)
    assert r.status_code == 204
    # Its files are removed in the background; the records are gone now, and so is the image.
    assert c.get(image["url"]).status_code == 404
    assert c.head(image["url"]).status_code == 404


def test_a_private_image_is_never_served_to_another(c: httpx.Client) -> None:
    owner, other = register_and_login(c), register_and_login(c)
    image = upload(c, owner, noise_png(40, 3), "private")
    name = image["filename"]
    body = cached(c, f"/v1/user/{name}", owner.auth)
    etag = f'"{image["sha256"]}"'
    for url, headers in (
        (f"/images/{name}", {}),
        (f"/v1/user/{name}", other.auth),
        (f"/v1/user/{name}", {}),
        (f"/v1/user/{name}", {"Authorization": "Bearer not-a-token"}),
    ):
        for extra in ({}, {"If-None-Match": etag}, {"Range": "bytes=0-9"}):
            for method in ("GET", "HEAD"):
                r = c.request(method, url, headers={**headers, **extra})
                assert r.status_code in (401, 404), (url, headers, extra, method)
                assert body[:64] not in r.content
    # ... while its owner still gets it, from the cache.
    assert cached(c, f"/v1/user/{name}", owner.auth) == body
    # The owner route is the owner's only, even for a public image served from the cache.
    public = upload(c, owner, noise_png(40, 9))
    cached(c, public["url"])
    cached(c, f"/v1/user/{public['filename']}", owner.auth)
    r = c.get(f"/v1/user/{public['filename']}", headers=other.auth)
    assert r.status_code == 404


def test_an_image_made_private_leaves_the_public_route_at_once(
    c: httpx.Client, server: ServerProcess
) -> None:
    account = register_and_login(c)
    image = upload(c, account, noise_png(40, 4))
    cached(c, image["url"])
    # No route changes visibility today; the database can, and the record decides.
    with sqlite3.connect(server.data_dir / "imagegate.db") as db:
        db.execute("UPDATE images SET visibility = 'private' WHERE name = ?", (image["filename"],))
    assert c.get(image["url"]).status_code == 404
    assert c.get(image["url"], headers={"If-None-Match": f'"{image["sha256"]}"'}).status_code == 404
    assert c.get(f"/v1/user/{image['filename']}", headers=account.auth).status_code == 200


def test_a_changed_file_is_not_served_stale(c: httpx.Client, server: ServerProcess) -> None:
    account = register_and_login(c)
    image = upload(c, account, noise_png(40, 5))
    path = server.data_dir / "images" / image["filename"]
    old = cached(c, image["url"])
    assert hashlib.sha256(old).hexdigest() == image["sha256"]

    path.write_bytes(old + b"appended")  # in place: the same inode, another size
    r = c.get(image["url"])
    assert r.content == old + b"appended"
    assert int(r.headers["Content-Length"]) == len(old) + 8

    same_size = bytes(reversed(old))
    tmp = path.with_name(".replacement")
    tmp.write_bytes(same_size)
    os.replace(tmp, path)  # another file of the same size
    assert c.get(image["url"]).content == same_size
    assert c.head(image["url"]).headers["Content-Length"] == str(len(same_size))

    path.unlink()  # the record stays: what was cached must not be served
    r = c.get(image["url"])
    assert r.status_code != 200
    assert same_size[:64] not in r.content


def test_the_cache_stays_within_its_bound(c: httpx.Client) -> None:
    account = register_and_login(c)
    assert metric(c, "imagegate_serve_cache_max_bytes") == 1 * MIB
    images = [upload(c, account, noise_png(180, 100 + i)) for i in range(14)]
    assert sum(int(i["bytes"]) for i in images) > 1.2 * MIB  # more than fits
    for _ in range(2):
        for image in images:
            r = c.get(image["url"])
            assert r.status_code == 200
            assert hashlib.sha256(r.content).hexdigest() == image["sha256"]
            assert 0 < metric(c, "imagegate_serve_cache_bytes") <= 1 * MIB
    assert metric(c, "imagegate_serve_cache_evictions_total") > 0
    assert metric(c, "imagegate_serve_cache_entries") < len(images)


def test_ranges_heads_and_304s_of_a_cached_image(c: httpx.Client) -> None:
    account = register_and_login(c)
    image = upload(c, account, noise_png(40, 6))
    body = cached(c, image["url"])
    etag = f'"{image["sha256"]}"'
    r = c.get(image["url"], headers={"Range": "bytes=10-99"})
    assert r.status_code == 206 and r.content == body[10:100]
    assert r.headers["Content-Range"] == f"bytes 10-99/{len(body)}"
    r = c.get(image["url"], headers={"Range": f"bytes={len(body)}-"})
    assert r.status_code == 416 and r.json() == {"error": "requested range not satisfiable"}
    r = c.get(image["url"], headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["ETag"] == etag
    r = c.head(image["url"])
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == str(len(body))
    for r in (c.get(image["url"]), c.get(f"/v1/user/{image['filename']}", headers=account.auth)):
        assert r.headers["ETag"] == etag
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["X-Request-Id"]
    assert c.get(image["url"]).headers["Cache-Control"].startswith("public")
    owner = c.get(f"/v1/user/{image['filename']}", headers=account.auth)
    assert owner.headers["Cache-Control"].startswith("private")


def test_without_the_cache(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"IMAGEGATE_SERVE_CACHE_MIB": "0"}).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            account = register_and_login(c)
            small = upload(c, account, noise_png(40, 7))
            large = upload(c, account, noise_png(400, 8))  # over 256 KiB: streamed
            assert int(large["bytes"]) > 256 * 1024
            for image in (small, large):
                for _ in range(2):
                    r = c.get(image["url"])
                    assert hashlib.sha256(r.content).hexdigest() == image["sha256"]
                etag = f'"{image["sha256"]}"'
                assert c.get(image["url"], headers={"If-None-Match": etag}).status_code == 304
                assert c.head(image["url"]).headers["Content-Length"] == str(image["bytes"])
            assert "imagegate_serve_cache" not in c.get("/metrics").text
    finally:
        server.stop()
