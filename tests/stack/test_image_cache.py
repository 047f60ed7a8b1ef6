"""The gateway's cache of public images: hits after the first read, Range from the cached
copy, and a deleted image gone within the revalidation time (10 s)."""

from __future__ import annotations

import time

from tests.conftest import register_and_login
from tests.stack.conftest import Stack
from tests.support import images

REVALIDATE_SECONDS = 10


def _cache_status(stack: Stack, request_id: str) -> str:
    # NGINX writes the line after the last byte has gone out, so the client can get here first.
    deadline = time.monotonic() + 5
    while True:
        for line in (stack.state_dir / "logs" / "access.log").read_text().splitlines()[::-1]:
            if f"rid={request_id} " in line:
                return line.rsplit("cache=", 1)[1].strip()
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log line for {request_id}")
        time.sleep(0.05)


def test_public_images_are_cached_and_deletions_reach_the_cache(stack: Stack) -> None:
    data = images.jpeg(320, 240, seed=11)
    with stack.client() as c:
        owner = register_and_login(c)
        name = c.post("/v1/upload", content=data, headers=owner.auth).json()["filename"]
        url = f"/images/{name}"
        first = c.get(url, headers={"X-Request-Id": f"first-{name}"})
        second = c.get(url, headers={"X-Request-Id": f"second-{name}"})
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        assert _cache_status(stack, f"first-{name}") == "MISS"
        assert _cache_status(stack, f"second-{name}") == "HIT"

        part = c.get(url, headers={"Range": "bytes=5-24"})
        assert part.status_code == 206
        assert part.content == first.content[5:25]
        beyond = c.get(url, headers={"Range": f"bytes={len(first.content) + 1}-"})
        assert beyond.status_code == 416
        assert beyond.json()["error"]

        assert c.delete(f"/v1/images/{name}", headers=owner.auth).status_code == 204
        deleted = time.monotonic()
        while (status := c.get(url).status_code) == 200:
            assert time.monotonic() - deleted < REVALIDATE_SECONDS + 3, "still served"
            time.sleep(0.5)
        assert status == 404
        assert c.get(url).json()["error"]


def test_private_images_are_never_cached_at_the_gateway(stack: Stack) -> None:
    with stack.client() as c:
        owner = register_and_login(c)
        body = c.post(
            "/v1/upload",
            content=images.jpeg(64, 64, seed=12),
            headers=owner.auth,
            params={"visibility": "private"},
        ).json()
        for i in range(2):
            rid = f"private-{i}-{body['filename']}"
            r = c.get(f"/v1/user/{body['filename']}", headers={**owner.auth, "X-Request-Id": rid})
            assert r.status_code == 200
            assert _cache_status(stack, rid) == "-"
        assert c.get(f"/images/{body['filename']}").status_code == 404
