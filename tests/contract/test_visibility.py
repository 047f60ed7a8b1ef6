"""An image's record (GET /v1/images/{name}) and its visibility switch (PATCH), with variants."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.conftest import Account, Target
from tests.support import images

# Through the gateway a public object is served from its cache, which checks with storage every
# 10 s; embedded mode has no such cache and must answer at once.
GATEWAY_CACHE_SECONDS = 10


def _upload(client: httpx.Client, account: Account, visibility: str = "public") -> str:
    r = client.post(
        "/v1/upload",
        content=images.jpeg(700, 500),
        headers=account.auth,
        params={"visibility": visibility},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["filename"])


def _public_status_becomes(client: httpx.Client, target: Target, path: str, status: int) -> None:
    bound = 0 if target.data_dir is not None else GATEWAY_CACHE_SECONDS + 3
    deadline = time.monotonic() + bound
    while True:
        got = client.get(path).status_code
        if got == status:
            return
        assert time.monotonic() < deadline, f"{path}: {got}, expected {status} within {bound} s"
        time.sleep(0.25)


def test_an_image_record_is_its_owners_only(
    client: httpx.Client, account: Account, make_account: Callable[[], Account]
) -> None:
    name = _upload(client, account)
    r = client.get(f"/v1/images/{name}", headers=account.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == name and body["visibility"] == "public"
    assert body["variants"]["thumb"] == f"/images/thumb/{name}"
    other = make_account()
    for who in (other.auth, {}):
        r = client.get(f"/v1/images/{name}", headers=who)
        assert r.status_code in (401, 404), r.text
        assert r.json()["error"]
    missing = client.get("/v1/images/not-a-name.jpg", headers=account.auth)
    assert missing.status_code == 404 and missing.json()["error"] == "no such image"


def test_making_an_image_private_and_public_again_moves_it_and_its_variants(
    client: httpx.Client, target: Target, account: Account
) -> None:
    name = _upload(client, account)
    # The thumb exists (made now if the background maker has not yet).
    assert client.get(f"/images/thumb/{name}").status_code == 200
    assert client.get(f"/images/{name}").status_code == 200

    r = client.patch(f"/v1/images/{name}", json={"visibility": "private"}, headers=account.auth)
    assert r.status_code == 200, r.text
    assert r.json()["visibility"] == "private" and r.json()["url"] == f"/v1/user/{name}"
    assert r.json()["variants"]["thumb"] == f"/v1/user/thumb/{name}"
    _public_status_becomes(client, target, f"/images/{name}", 404)
    _public_status_becomes(client, target, f"/images/thumb/{name}", 404)
    owner = client.get(f"/v1/user/{name}", headers=account.auth)
    assert owner.status_code == 200 and owner.content[:2] == b"\xff\xd8"
    assert client.get(f"/v1/user/thumb/{name}", headers=account.auth).status_code == 200
    listed = client.get("/v1/images", headers=account.auth).json()["items"]
    assert [i["visibility"] for i in listed if i["filename"] == name] == ["private"]

    # The same change again is a no-op with the same answer.
    again = client.patch(f"/v1/images/{name}", json={"visibility": "private"}, headers=account.auth)
    assert again.status_code == 200 and again.json()["visibility"] == "private"

    back = client.patch(f"/v1/images/{name}", json={"visibility": "public"}, headers=account.auth)
    assert back.status_code == 200 and back.json()["visibility"] == "public"
    _public_status_becomes(client, target, f"/images/{name}", 200)
    assert client.get(f"/images/thumb/{name}").status_code == 200
    if target.data_dir is not None:  # one file per object, whatever the visibility
        assert f"{name.partition('.')[0]}.thumb.jpg" in (target.variant_files(name) or set())


def test_visibility_changes_are_checked(
    client: httpx.Client, account: Account, make_account: Callable[[], Account]
) -> None:
    name = _upload(client, account, "private")
    for body in ({"visibility": "secret"}, {}, {"visibility": "public", "name": "x"}, [1]):
        r = client.patch(f"/v1/images/{name}", json=body, headers=account.auth)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]
    not_json = client.patch(
        f"/v1/images/{name}",
        content=b"{",
        headers={**account.auth, "Content-Type": "application/json"},
    )
    assert not_json.status_code in (400, 422) and not_json.json()["error"]
    other = make_account()
    theirs = client.patch(f"/v1/images/{name}", json={"visibility": "public"}, headers=other.auth)
    assert theirs.status_code == 404 and theirs.json()["error"] == "no such image"
    anonymous = client.patch(f"/v1/images/{name}", json={"visibility": "public"})
    assert anonymous.status_code == 401
    # Nothing changed by the refusals.
    mine = client.get(f"/v1/images/{name}", headers=account.auth).json()
    assert mine["visibility"] == "private"
    assert client.get(f"/images/{name}").status_code == 404
