"""Same upload twice: the owner's identical bytes answer 200 with the image stored the first
time (and ``Location``), store nothing, emit no event and leave the usage as it was; another
owner's identical bytes are their own image; identical uploads at once end with one image.

"Identical" is the sha256 of the bytes as uploaded (the multipart ``file`` part's bytes for a
form upload), not of what the server stores after re-encoding.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Account, register_and_login
from tests.embedded.test_recovery import assert_consistent
from tests.support import images
from tests.support.rawhttp import metrics, wait_for
from tests.support.server import ServerProcess

CONCURRENT = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Room for CONCURRENT uploads of one account at once (the default per-account queue is 4:
    # the rest would be refused 503 from their headers, before the digest is known).
    srv = ServerProcess(
        tmp_path_factory.mktemp("dedupe") / "data",
        env={
            "IMAGEGATE_CODEC_WORKERS": "2",
            "IMAGEGATE_CODEC_QUEUE": "32",
            "IMAGEGATE_CODEC_ACCOUNT_QUEUE": str(CONCURRENT),
        },
    ).start()
    yield srv
    srv.stop()


def _account(server: ServerProcess) -> Account:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        return register_and_login(c)


def _upload(server: ServerProcess, account: Account, data: bytes, **params: str) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        return c.post("/v1/upload", content=data, params=params, headers=account.auth)


def _usage(server: ServerProcess, account: Account) -> tuple[int, int]:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        r = c.get("/v1/user", headers=account.auth)
    assert r.status_code == 200, r.text
    return int(r.json()["images"]), int(r.json()["bytes"])


def _originals(data_dir: Path) -> set[str]:
    """Stored originals (variants are ``<uuid>.<key>.<ext>``)."""
    return {p.name for p in (data_dir / "images").rglob("*") if p.name.count(".") == 1}


def _stored_events(data_dir: Path, name: str) -> int:
    with sqlite3.connect(data_dir / "imagegate.db") as db:
        row = db.execute(
            "SELECT count(*) FROM outbox_events WHERE type LIKE '%image.stored' AND subject = ?",
            (f"images/{name}",),
        ).fetchone()
    return int(row[0])


def _duplicates(server: ServerProcess) -> float:
    return metrics(server.base_url).get('imagegate_uploads_total{outcome="duplicate"}', 0.0)


def test_same_bytes_twice_answer_the_first_image(server: ServerProcess) -> None:
    owner = _account(server)
    data = images.jpeg(640, 480, seed=101)
    first = _upload(server, owner, data)
    assert first.status_code == 201, first.text
    usage = _usage(server, owner)
    originals = _originals(server.data_dir)
    duplicates = _duplicates(server)

    again = _upload(server, owner, data)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()  # the same image, the same body shape
    assert again.headers["Location"] == first.headers["Location"] == first.json()["url"]
    assert _usage(server, owner) == usage
    assert _originals(server.data_dir) == originals  # nothing stored
    assert _stored_events(server.data_dir, first.json()["filename"]) == 1
    assert _duplicates(server) == duplicates + 1

    # The same bytes as a multipart form's file: the digest is of the file's bytes.
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        form = c.post(
            "/v1/upload",
            headers=owner.auth,
            files={"file": ("again.jpg", data, "image/jpeg")},
        )
    assert form.status_code == 200, form.text
    assert form.json()["filename"] == first.json()["filename"]

    # One byte more is other bytes: a new image.
    other = _upload(server, owner, data + b"\0")
    assert other.status_code == 201, other.text
    assert other.json()["filename"] != first.json()["filename"]
    assert_consistent(server.data_dir)


def test_another_owners_identical_upload_is_their_own_image(server: ServerProcess) -> None:
    alice, bob = _account(server), _account(server)
    data = images.jpeg(320, 240, seed=102)
    a = _upload(server, alice, data)
    b = _upload(server, bob, data)
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert a.json()["filename"] != b.json()["filename"]
    assert _usage(server, bob)[0] == 1
    # Bob deleting his copy leaves Alice's.
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        assert c.delete(f"/v1/images/{b.json()['filename']}", headers=bob.auth).status_code == 204
        assert c.get(a.json()["url"]).status_code == 200


def test_a_deleted_image_uploaded_again_is_stored_again(server: ServerProcess) -> None:
    owner = _account(server)
    data = images.jpeg(200, 200, seed=103)
    first = _upload(server, owner, data)
    assert first.status_code == 201, first.text
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        gone = c.delete(f"/v1/images/{first.json()['filename']}", headers=owner.auth)
    assert gone.status_code == 204
    again = _upload(server, owner, data)
    assert again.status_code == 201, again.text
    assert again.json()["filename"] != first.json()["filename"]


@pytest.mark.parametrize(("before", "after"), [("public", "private"), ("private", "public")])
def test_a_different_visibility_answers_the_existing_image_unchanged(
    server: ServerProcess, before: str, after: str
) -> None:
    owner = _account(server)
    data = images.jpeg(300, 200, seed=104 if before == "public" else 105)
    first = _upload(server, owner, data, visibility=before)
    assert first.status_code == 201, first.text
    again = _upload(server, owner, data, visibility=after)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.json()["visibility"] == before
    prefix = "/images/" if before == "public" else "/v1/user/"
    assert again.headers["Location"] == prefix + first.json()["filename"]
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        public = c.get(f"/images/{first.json()['filename']}")
    assert public.status_code == (200 if before == "public" else 404)


def test_identical_uploads_at_once_end_with_one_image(server: ServerProcess) -> None:
    owner = _account(server)
    # Big enough that the uploads overlap: the first is still being processed when the
    # others arrive (they wait for it, or, arriving later, find its record).
    data = images.encode(images.photo(1600, 1200, seed=106), "PNG", compress_level=1)
    originals = _originals(server.data_dir)
    start = threading.Barrier(CONCURRENT)

    def one() -> httpx.Response:
        start.wait(30)
        return _upload(server, owner, data)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda _: one(), range(CONCURRENT)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * (CONCURRENT - 1) + [201], [r.text for r in answers]
    assert len({r.json()["filename"] for r in answers}) == 1
    name = answers[0].json()["filename"]
    assert _usage(server, owner)[0] == 1
    assert _originals(server.data_dir) - originals == {name}
    assert _stored_events(server.data_dir, name) == 1
    wait_for(
        "the server to be idle",
        lambda: metrics(server.base_url)["imagegate_uploads_admitted"] == 0,
    )
    assert_consistent(server.data_dir)
