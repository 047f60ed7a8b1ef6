"""Variants: presets by content negotiation, owners' custom sizes, privacy and deletion."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import Account, Target
from tests.support import images

ACCEPTS = {
    "avif": ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", "image/avif"),  # Chromium
    "webp": ("image/webp,*/*", "image/webp"),  # Safari 14-15, older Firefox
    "any": ("*/*", "image/jpeg"),
    "none": (None, "image/jpeg"),
    "avif refused": ("image/avif;q=0, image/webp", "image/webp"),
}


def _get(client: httpx.Client, url: str, accept: str | None, **headers: str) -> httpx.Response:
    if accept is not None:
        headers["Accept"] = accept
    return client.get(url, headers=headers)


def _size(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as img:
        return img.size


@pytest.fixture
def photo(client: httpx.Client, account: Account) -> dict[str, object]:
    r = client.post("/v1/upload", content=images.jpeg(1200, 800), headers=account.auth)
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def test_the_upload_answer_and_listing_show_the_variants(
    client: httpx.Client, account: Account, photo: dict[str, object]
) -> None:
    name = photo["filename"]
    variants = photo["variants"]
    assert isinstance(variants, dict)
    assert variants["thumb"] == f"/images/thumb/{name}"
    assert set(variants) >= {"thumb", "small", "medium", "large"}
    # Never upscaled: the 1200-px original is the widest entry, once.
    assert photo["srcset"] == (f"/images/small/{name} 640w, /images/medium/{name} 1200w"), photo[
        "srcset"
    ]
    listed = client.get("/v1/images", headers=account.auth).json()["items"][0]
    assert listed["variants"] == variants and listed["srcset"] == photo["srcset"]


@pytest.mark.parametrize("kind", list(ACCEPTS))
def test_accept_chooses_the_format(
    client: httpx.Client, photo: dict[str, object], kind: str
) -> None:
    accept, content_type = ACCEPTS[kind]
    r = _get(client, f"/images/thumb/{photo['filename']}", accept)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == content_type
    assert "accept" in r.headers["Vary"].lower()
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert _size(r.content) == (320, 320)  # cover: the box exactly, centre crop
    with Image.open(io.BytesIO(r.content)) as img:
        assert Image.MIME[img.format or ""] == content_type


def test_each_format_has_its_own_etag_and_answers_304_and_range(
    client: httpx.Client, photo: dict[str, object]
) -> None:
    url = f"/images/small/{photo['filename']}"
    tags = set()
    for accept, _ in (ACCEPTS["avif"], ACCEPTS["webp"], ACCEPTS["any"]):
        r = _get(client, url, accept)
        assert _size(r.content) == (640, 427)  # contain: inside the box
        tags.add(r.headers["ETag"])
        again = _get(client, url, accept, **{"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304, (r.headers, again.headers)
        part = _get(client, url, accept, Range="bytes=0-99")
        assert part.status_code == 206 and part.content == r.content[:100]
    assert len(tags) == 3


def test_private_variants_are_the_owners_only(
    client: httpx.Client, account: Account, make_account: object
) -> None:
    r = client.post(
        "/v1/upload",
        content=images.jpeg(400, 300),
        headers=account.auth,
        params={"visibility": "private"},
    )
    name = r.json()["filename"]
    assert r.json()["variants"]["thumb"] == f"/v1/user/thumb/{name}"
    mine = client.get(f"/v1/user/thumb/{name}", headers=account.auth)
    assert mine.status_code == 200 and _size(mine.content) == (300, 300)
    assert mine.headers["Cache-Control"].startswith("private")
    assert client.get(f"/images/thumb/{name}").status_code == 404
    assert client.get(f"/v1/user/thumb/{name}").status_code == 401
    other = make_account()  # type: ignore[operator]
    assert client.get(f"/v1/user/thumb/{name}", headers=other.auth).status_code == 404
    # Public images' variants are on the owner's route too.


def test_owners_get_any_size_and_strangers_need_a_signature(
    client: httpx.Client, account: Account, photo: dict[str, object]
) -> None:
    name = photo["filename"]
    owner = client.get(
        f"/v1/user/size/{name}", params={"w": 200, "h": 100, "fit": "cover"}, headers=account.auth
    )
    assert owner.status_code == 200, owner.text
    assert _size(owner.content) == (200, 100)
    wide = client.get(f"/v1/user/size/{name}", params={"w": 300}, headers=account.auth)
    assert _size(wide.content) == (300, 200)
    unsigned = client.get(f"/images/size/{name}", params={"w": 200, "h": 100})
    assert unsigned.status_code == 403
    assert "signature" in unsigned.json()["error"]
    forged = client.get(f"/images/size/{name}", params={"w": 200, "h": 100, "sig": "A" * 43})
    assert forged.status_code == 403 and forged.json()["error"]


@pytest.mark.parametrize(
    "params",
    [
        {"w": 5000},
        {"h": 4097},
        {"w": 0},
        {"w": "x"},
        {"fit": "stretch", "w": 10},
        {},
        {"w": 100, "fit": "cover"},
    ],
)
def test_bad_sizes_are_422(
    client: httpx.Client, account: Account, photo: dict[str, object], params: dict[str, object]
) -> None:
    r = client.get(f"/v1/user/size/{photo['filename']}", params=params, headers=account.auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/images/nosuch/{name}",
        "/images/thumb/not-a-name.jpg",
        "/images/thumb/{stem}.png",
        "/images/THUMB/{name}",
    ],
)
def test_unknown_presets_and_names_are_404(
    client: httpx.Client, photo: dict[str, object], path: str
) -> None:
    name = str(photo["filename"])
    r = client.get(path.format(name=name, stem=name.split(".")[0]))
    assert r.status_code == 404
    assert r.json()["error"]


def test_deleting_an_image_deletes_its_variants(
    target: Target, client: httpx.Client, account: Account, photo: dict[str, object]
) -> None:
    name = str(photo["filename"])
    urls = [f"/images/{p}/{name}" for p in ("thumb", "small", "medium", "large")]
    for url in urls:
        assert client.get(url).status_code == 200  # made on demand if not made yet
    assert client.delete(f"/v1/images/{name}", headers=account.auth).status_code == 204
    files = target.variant_files(name)
    if files is not None:
        assert files == set()  # every format of every preset: no orphan left
    # Through a gateway, a cached public copy may live its revalidation period (10 s).
    deadline = time.monotonic() + 15
    for url in urls:
        while (status := client.get(url).status_code) != 404 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 404, url
    assert client.get(f"/v1/user/thumb/{name}", headers=account.auth).status_code == 404
