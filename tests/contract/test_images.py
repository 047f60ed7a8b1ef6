"""Listing and deleting the caller's images."""

from __future__ import annotations

import httpx

from tests.conftest import Account, Target
from tests.support import images


def _upload(client: httpx.Client, account: Account, seed: int, **params: str) -> dict[str, object]:
    r = client.post(
        "/v1/upload", content=images.jpeg(64, 48, seed=seed), headers=account.auth, params=params
    )
    assert r.status_code == 201
    body: dict[str, object] = r.json()
    return body


def test_listing_is_newest_first_and_paginated(client: httpx.Client, account: Account) -> None:
    names = [
        _upload(client, account, i, visibility=v)["filename"]
        for i, v in enumerate(["public", "private", "public"])
    ]
    first = client.get("/v1/images", params={"limit": 2}, headers=account.auth).json()
    assert [i["filename"] for i in first["items"]] == names[::-1][:2]
    second = client.get(
        "/v1/images", params={"limit": 2, "cursor": first["next_cursor"]}, headers=account.auth
    ).json()
    assert [i["filename"] for i in second["items"]] == [names[0]]
    assert second["next_cursor"] is None
    assert first["items"][1]["visibility"] == "private"


def test_listing_shows_only_the_callers_images(client: httpx.Client, make_account: object) -> None:
    alice, bob = make_account(), make_account()  # type: ignore[operator]
    _upload(client, alice, 1, visibility="private")
    assert client.get("/v1/images", headers=bob.auth).json()["items"] == []


def test_listing_rejects_bad_parameters(client: httpx.Client, account: Account) -> None:
    for params in ({"cursor": "!!!"}, {"cursor": "bm90IGpzb24"}, {"limit": 0}, {"limit": 1000}):
        r = client.get("/v1/images", params=params, headers=account.auth)
        assert r.status_code == 422
        assert r.json()["error"]


def test_delete_removes_record_and_bytes(
    target: Target, client: httpx.Client, account: Account
) -> None:
    body = _upload(client, account, 5)
    name = body["filename"]
    before = target.stored_files()
    if before is not None:  # a local folder (embedded mode); the stack checks its bucket
        assert f"images/{name}" in before
    assert client.delete(f"/v1/images/{name}", headers=account.auth).status_code == 204
    after = target.stored_files()
    if before is not None:
        assert after == before - {f"images/{name}"}  # the bytes went with the record
    assert client.get(f"/images/{name}").status_code == 404
    assert client.get(f"/v1/user/{name}", headers=account.auth).status_code == 404
    info = client.get("/v1/user", headers=account.auth).json()
    assert (info["images"], info["bytes"]) == (0, 0)
    assert client.delete(f"/v1/images/{name}", headers=account.auth).status_code == 404


def test_only_the_owner_deletes(client: httpx.Client, make_account: object) -> None:
    owner, other = make_account(), make_account()  # type: ignore[operator]
    name = _upload(client, owner, 6)["filename"]
    r = client.delete(f"/v1/images/{name}", headers=other.auth)
    assert r.status_code == 404
    assert client.get(f"/images/{name}").status_code == 200
    assert client.delete(f"/v1/images/{name}").status_code == 401


def test_user_info_counts_images_and_bytes(client: httpx.Client, account: Account) -> None:
    sizes = [int(str(_upload(client, account, i)["bytes"])) for i in range(2)]
    info = client.get("/v1/user", headers=account.auth).json()
    assert info["images"] == 2
    assert info["bytes"] == sum(sizes)
