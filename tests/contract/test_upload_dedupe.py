"""Same upload twice, as any client sees it (embedded, or through the gateway): the owner's
identical bytes answer 200 with the first image and its Location; another owner's identical
bytes are a new image (201). The embedded-only checks (storage, events, races) are in
tests/embedded/test_upload_dedupe.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import httpx

from tests.conftest import Account, Target
from tests.support import images


def _upload(client: httpx.Client, account: Account, data: bytes) -> httpx.Response:
    return client.post(
        "/v1/upload",
        content=data,
        headers={**account.auth, "Content-Type": "application/octet-stream"},
    )


def test_the_same_bytes_twice_answer_the_first_image(
    target: Target, client: httpx.Client, make_account: Callable[[], Account]
) -> None:
    owner, other = make_account(), make_account()
    # Unique bytes per run (a tail after the JPEG's end), so that a suite run again against
    # the same server (IMAGEGATE_BASE_URL) starts from nothing.
    data = images.jpeg(400, 300, seed=7) + os.urandom(16)
    first = _upload(client, owner, data)
    assert first.status_code == 201, first.text
    stored = target.stored_files()

    again = _upload(client, owner, data)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert target.stored_files() == stored  # (None through a gateway: not visible)
    user = client.get("/v1/user", headers=owner.auth).json()
    assert (user["images"], user["bytes"]) == (1, first.json()["bytes"])

    theirs = _upload(client, other, data)
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["filename"] != first.json()["filename"]


def test_a_client_finds_an_upload_by_the_digest_of_its_bytes(
    client: httpx.Client, make_account: Callable[[], Account]
) -> None:
    owner, other = make_account(), make_account()
    data = images.jpeg(320, 240, seed=9) + os.urandom(16)
    digest = hashlib.sha256(data).hexdigest()
    query = {"uploaded_sha256": digest}
    empty = client.get("/v1/images", params=query, headers=owner.auth)
    assert empty.status_code == 200 and empty.json() == {"items": [], "next_cursor": None}
    first = _upload(client, owner, data)
    assert first.status_code == 201, first.text
    found = client.get("/v1/images", params=query, headers=owner.auth).json()
    assert [i["filename"] for i in found["items"]] == [first.json()["filename"]]
    # The stored bytes' digest is another (re-encoded); and another owner finds nothing.
    assert first.json()["sha256"] != digest
    theirs = client.get("/v1/images", params=query, headers=other.auth).json()
    assert theirs["items"] == []
    bad = client.get("/v1/images", params={"uploaded_sha256": "XYZ"}, headers=owner.auth)
    assert bad.status_code == 422 and bad.json()["error"]
