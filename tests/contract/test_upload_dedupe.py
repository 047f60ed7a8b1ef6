"""Same upload twice, as any client sees it (embedded, or through the gateway): the owner's
identical bytes answer 200 with the first image and its Location; another owner's identical
bytes are a new image (201). The embedded-only checks (storage, events, races) are in
tests/embedded/test_upload_dedupe.py."""

from __future__ import annotations

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
