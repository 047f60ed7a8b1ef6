"""Public objects through the gateway's cache (deploy/nginx/public-object.conf.template): one
cached copy per object whatever a client's Accept-Encoding or Origin, none of storage's CORS
headers, and the thumb preset's own location answering exactly as every other preset's."""

from __future__ import annotations

import time

import httpx

from tests.conftest import Account, register_and_login
from tests.stack.conftest import Stack
from tests.stack.test_image_cache import _cache_status
from tests.support import images

AVIF = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"
# Headers a client may send that must not give a public object a copy of its own in the cache
# (storage's Vary names both) nor change the answer's headers.
CLIENT_VARIETY: list[dict[str, str]] = [
    {"Accept-Encoding": "gzip, deflate"},
    {"Accept-Encoding": "br"},
    {"Accept-Encoding": "identity"},
    {"Origin": "https://a.example"},
    {"Origin": "https://b.example", "Accept-Encoding": "gzip"},
]


def _upload(c: httpx.Client, account: Account, seed: int, visibility: str = "public") -> str:
    r = c.post(
        "/v1/upload",
        content=images.jpeg(900, 600, seed=seed),
        headers=account.auth,
        params={"visibility": visibility},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["filename"])


def _get_made(c: httpx.Client, url: str, **headers: str) -> httpx.Response:
    """A public variant once it exists (made after the upload, or on demand by this read)."""
    deadline = time.monotonic() + 60
    while (r := c.get(url, headers=headers)).status_code != 200:
        assert time.monotonic() < deadline, (url, r.status_code, r.text)
        time.sleep(0.2)
    return r


def test_one_cached_copy_whatever_the_clients_encoding_or_origin(stack: Stack) -> None:
    with stack.client() as c:
        name = _upload(c, register_and_login(c), seed=31)
        for url in (f"/images/{name}", f"/images/thumb/{name}", f"/images/small/{name}"):
            first = _get_made(c, url, Accept=AVIF)
            for i, extra in enumerate(CLIENT_VARIETY):
                rid = f"variety-{i}-{url.replace('/', '_')}"
                r = c.get(url, headers={"Accept": AVIF, "X-Request-Id": rid, **extra})
                assert r.status_code == 200 and r.content == first.content, (url, extra)
                assert r.headers["ETag"] == first.headers["ETag"]
                # Storage's CORS answer (that origin, with credentials) never gets through.
                cors = [h for h in r.headers if h.lower().startswith("access-control-")]
                assert cors == [], (url, extra, cors)
                # A copy already cached serves every client: never a miss of its own.
                assert _cache_status(stack, rid) in ("HIT", "REVALIDATED"), (url, extra)


def test_thumbs_answer_as_every_other_preset(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        name = _upload(c, account, seed=32)
        stable = (
            "Cache-Control",
            "Vary",
            "X-Content-Type-Options",
            "Accept-Ranges",
            "Content-Type",
        )
        for accept, content_type in (
            (AVIF, "image/avif"),
            ("image/webp", "image/webp"),
            ("*/*", "image/jpeg"),
        ):
            for preset in ("thumb", "small"):  # made, and in the cache from here on
                _get_made(c, f"/images/{preset}/{name}", Accept=accept)
            thumb = c.get(f"/images/thumb/{name}", headers={"Accept": accept})
            small = c.get(f"/images/small/{name}", headers={"Accept": accept})
            assert thumb.status_code == small.status_code == 200
            assert thumb.headers["Content-Type"] == content_type
            assert {h: thumb.headers.get(h) for h in stable} == {
                h: small.headers.get(h) for h in stable
            }
            assert set(thumb.headers) == set(small.headers), (thumb.headers, small.headers)
            again = c.get(f"/images/thumb/{name}", headers={"Accept": accept})
            assert again.content == thumb.content
            part = c.get(f"/images/thumb/{name}", headers={"Accept": accept, "Range": "bytes=3-42"})
            assert part.status_code == 206 and part.content == thumb.content[3:43]
            head = c.head(f"/images/thumb/{name}", headers={"Accept": accept})
            assert head.status_code == 200
            assert head.headers["Content-Length"] == str(len(thumb.content))
        for method in ("POST", "DELETE", "PUT"):
            on_thumb = c.request(method, f"/images/thumb/{name}")
            on_small = c.request(method, f"/images/small/{name}")
            assert on_thumb.status_code == on_small.status_code >= 400, method
            assert on_thumb.json()["error"]
        # Not public, or no such image: the uploader's JSON 404, as for every preset.
        private = _upload(c, account, seed=33, visibility="private")
        absent = "0b8f2c44-5a77-4c1e-9d3b-2f6a1e0c9d11.jpg"
        for missing in (private, absent):
            r = c.get(f"/images/thumb/{missing}", headers={"Accept": AVIF})
            assert r.status_code == 404 and r.json()["error"], (missing, r.status_code)
            assert r.status_code == c.get(f"/images/small/{missing}").status_code
