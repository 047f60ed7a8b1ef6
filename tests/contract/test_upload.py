"""Uploads: accepted formats, normalization, visibility, and every bad input leaving nothing."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tests.conftest import Account, Target
from tests.support import images

MIB = 1024 * 1024


def upload(client: httpx.Client, account: Account, data: bytes, **params: str) -> httpx.Response:
    return client.post(
        "/v1/upload",
        content=data,
        params=params,
        headers={**account.auth, "Content-Type": "application/octet-stream"},
    )


def test_upload_raw_body_returns_the_stored_image(client: httpx.Client, account: Account) -> None:
    data = images.jpeg(800, 600, quality=95)
    r = upload(client, account, data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["filename"].endswith(".jpg")
    assert body["content_type"] == "image/jpeg"
    assert (body["width"], body["height"]) == (800, 600)
    assert body["visibility"] == "public"
    assert body["url"] == f"/images/{body['filename']}"
    assert r.headers["Location"] == body["url"]
    assert 0 < body["bytes"] <= len(data)
    got = client.get(body["url"])
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == body["sha256"]
    assert len(got.content) == body["bytes"]


def test_upload_multipart_field_file(client: httpx.Client, account: Account) -> None:
    data = images.encode(images.photo(300, 200), "PNG")
    r = client.post(
        "/v1/upload",
        headers=account.auth,
        files={"file": ("picture.png", data, "image/png")},
        data={"note": "ignored"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["content_type"] == "image/png"
    assert client.get(r.json()["url"]).content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("nothing_stored")
def test_upload_multipart_without_file_field(client: httpx.Client, account: Account) -> None:
    r = client.post("/v1/upload", headers=account.auth, files={"other": ("a.png", b"abc")})
    assert r.status_code == 400
    assert "file" in r.json()["error"]


@pytest.mark.parametrize(
    ("fmt", "ext", "ctype"),
    [
        ("JPEG", "jpg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("GIF", "gif", "image/gif"),
        ("WEBP", "webp", "image/webp"),
        ("AVIF", "avif", "image/avif"),
    ],
)
def test_format_is_detected_from_the_bytes(
    client: httpx.Client, account: Account, fmt: str, ext: str, ctype: str
) -> None:
    data = images.encode(images.photo(200, 150), fmt)
    # The client's Content-Type lies; it is ignored.
    r = client.post(
        "/v1/upload", content=data, headers={**account.auth, "Content-Type": "text/html"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["filename"].endswith("." + ext)
    served = client.get(r.json()["url"])
    assert served.headers["content-type"] == ctype
    assert Image.open(io.BytesIO(served.content)).format == fmt


def test_metadata_is_stripped_and_orientation_applied(
    client: httpx.Client, account: Account
) -> None:
    data = images.jpeg(400, 200, orientation=6, gps=True, comment=b"secret comment")
    r = upload(client, account, data)
    assert r.status_code == 201
    body = r.json()
    assert (body["width"], body["height"]) == (200, 400)  # rotated 90 degrees
    served = client.get(body["url"]).content
    img = Image.open(io.BytesIO(served))
    assert img.size == (200, 400)
    assert not img.getexif()
    assert "comment" not in img.info
    assert b"secret comment" not in served
    assert b"TestCam" not in served


def test_metadata_is_stripped_without_reencoding_when_that_is_smaller(
    client: httpx.Client, account: Account
) -> None:
    """A JPEG already compressed harder than the service would: the original is kept, only its
    metadata cut out, so its pixels and quantization tables are exactly the original's."""
    data = images.jpeg(600, 400, quality=40, gps=True, comment=b"secret comment")
    r = upload(client, account, data)
    assert r.status_code == 201, r.text
    served = client.get(r.json()["url"]).content
    assert len(served) < len(data)
    assert r.json()["bytes"] == len(served)
    assert b"TestCam" not in served
    assert b"secret comment" not in served
    original, stored = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(served))
    assert not stored.getexif()
    assert "comment" not in stored.info
    # A re-encode (at quality 80) would change both; a lossless strip changes neither.
    assert stored.quantization == original.quantization  # type: ignore[attr-defined]
    assert stored.tobytes() == original.tobytes()


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description>SECRET-XMP-42</rdf:Description>'
XMP += b"</x:xmpmeta>"


def _with_metadata(fmt: str, quality: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[images.GPS_IFD] = {1: "N", 2: (55.0, 45.0, 21.0)}
    img = images.photo(320, 240)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        return images.encode(img, fmt, pnginfo=info, exif=exif.tobytes())
    return images.encode(img, fmt, quality=quality, exif=exif.tobytes(), xmp=XMP)


@pytest.mark.parametrize(
    ("fmt", "quality"),
    [
        ("JPEG", 30),  # the stripped original is smaller: kept
        ("JPEG", 97),  # re-encoded
        ("PNG", 0),
        ("WEBP", 30),
        ("WEBP", 97),
        ("AVIF", 30),
        ("AVIF", 95),
    ],
)
def test_xmp_and_exif_are_stripped_from_every_format(
    client: httpx.Client, account: Account, fmt: str, quality: int
) -> None:
    data = _with_metadata(fmt, quality)
    assert b"SECRET-XMP-42" in data and b"TestCam" in data  # the check below can fail
    r = upload(client, account, data)
    assert r.status_code == 201, r.text
    served = client.get(r.json()["url"]).content
    assert b"SECRET-XMP-42" not in served
    assert b"xmpmeta" not in served
    assert b"TestCam" not in served
    img = Image.open(io.BytesIO(served))
    assert img.format == fmt
    assert not img.getexif()
    assert "xmp" not in img.info and "XML:com.adobe.xmp" not in img.info


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_keep_frames_and_timing(
    client: httpx.Client, account: Account, fmt: str
) -> None:
    durations = [40, 80, 120, 160, 200]
    data = images.animated(fmt, frames=5, durations=durations)
    r = upload(client, account, data)
    assert r.status_code == 201, r.text
    assert r.json()["frames"] == 5
    img = Image.open(io.BytesIO(client.get(r.json()["url"]).content))
    assert img.n_frames == 5
    got = []
    for i in range(img.n_frames):
        img.seek(i)
        img.load()
        got.append(int(img.info["duration"]))
    assert got == durations


def test_private_images_are_for_their_owner_only(
    client: httpx.Client, make_account: object
) -> None:
    owner, other = make_account(), make_account()  # type: ignore[operator]
    r = upload(client, owner, images.jpeg(120, 90), visibility="private")
    assert r.status_code == 201
    body = r.json()
    assert body["visibility"] == "private"
    assert body["url"] == f"/v1/user/{body['filename']}"
    name = body["filename"]
    assert client.get(f"/images/{name}").status_code == 404
    assert client.get(f"/v1/user/{name}", headers=other.auth).status_code == 404
    assert client.get(f"/v1/user/{name}").status_code == 401
    mine = client.get(f"/v1/user/{name}", headers=owner.auth)
    assert mine.status_code == 200
    assert hashlib.sha256(mine.content).hexdigest() == body["sha256"]
    assert mine.headers["Cache-Control"].startswith("private")


def test_bad_visibility_is_422(client: httpx.Client, account: Account) -> None:
    r = upload(client, account, images.jpeg(50, 50), visibility="secret")
    assert r.status_code == 422
    assert "visibility" in r.json()["error"]


# --- every bad input: the right status, a JSON message, and nothing stored --------------------


@pytest.fixture
def nothing_stored(target: Target, client: httpx.Client, account: Account) -> Iterator[None]:
    before = target.stored_files()
    yield
    info = client.get("/v1/user", headers=account.auth).json()
    assert (info["images"], info["bytes"]) == (0, 0)
    assert client.get("/v1/images", headers=account.auth).json()["items"] == []
    if before is not None:
        assert target.stored_files() == before


def assert_error(r: httpx.Response, status: int, needle: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert needle in r.json()["error"]


@pytest.mark.usefixtures("nothing_stored")
def test_empty_body_is_400(client: httpx.Client, account: Account) -> None:
    assert_error(upload(client, account, b""), 400, "empty")


@pytest.mark.usefixtures("nothing_stored")
def test_body_over_the_cap_is_413_while_streaming(client: httpx.Client, account: Account) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the cap must hold on the stream itself
        chunk = images.jpeg(64, 64) + b"\0" * (MIB - len(images.jpeg(64, 64)))
        for _ in range(41):
            yield chunk

    try:
        r = client.post("/v1/upload", content=body(), headers=account.auth)
    except httpx.WriteError:
        return  # the server may close the connection before reading the rest: also a refusal
    assert_error(r, 413, "limit")


@pytest.mark.usefixtures("nothing_stored")
def test_declared_length_over_the_cap_is_413_at_once(
    client: httpx.Client, account: Account
) -> None:
    r = upload(client, account, b"\xff\xd8\xff" + b"\0" * (40 * MIB + 1))
    assert_error(r, 413, "limit")


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize("kind", sorted(images.NOT_IMAGES))
def test_non_images_are_415(client: httpx.Client, account: Account, kind: str) -> None:
    assert_error(upload(client, account, images.NOT_IMAGES[kind]), 415, "not an image")


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (images.png_header_only(20_000, 10), "a side"),
        (images.png_header_only(10, 10_001), "a side"),
        (images.png_header_only(8_000, 8_000), "pixels in all"),
        (images.gif_many_frames(901), "frames"),
    ],
    ids=["too-wide", "too-tall", "too-many-pixels", "too-many-frames"],
)
def test_oversized_images_are_422(
    client: httpx.Client, account: Account, data: bytes, needle: str
) -> None:
    assert_error(upload(client, account, data), 422, needle)


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(
    "data",
    [
        images.jpeg(400, 300)[:3000],
        images.encode(images.photo(300, 200), "PNG")[:2000],
        images.encode(images.photo(300, 200), "WEBP")[:500],
        images.animated("GIF", frames=3)[:200],
        b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 8,
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 50,
    ],
    ids=[
        "truncated-jpeg",
        "truncated-png",
        "truncated-webp",
        "truncated-gif",
        "corrupt-jpeg",
        "corrupt-png",
    ],
)
def test_truncated_or_corrupt_images_are_422(
    client: httpx.Client, account: Account, data: bytes
) -> None:
    r = upload(client, account, data)
    assert_error(r, 422, "")
    # The message names the problem: damaged, or cut short (the codec says which it found).
    message = r.json()["error"]
    assert "corrupt" in message or "ends early" in message, message


@pytest.mark.usefixtures("nothing_stored")
def test_upload_without_token_is_401(client: httpx.Client, account: Account) -> None:
    r = client.post("/v1/upload", content=images.jpeg(50, 50))
    assert_error(r, 401, "token")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
