"""API keys on the production topology: through the gateway (its auth_request accepts them the
same way), scope-checked by the uploader replicas, refused for key management, and revoked
within a second on every security and uploader replica."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import Account, register_and_login
from tests.stack.conftest import Stack
from tests.support import images


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(c: httpx.Client, account: Account, scopes: list[str]) -> dict[str, Any]:
    r = c.post("/v1/keys", json={"name": "ci", "scopes": scopes}, headers=account.auth)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


def test_keys_through_the_gateway(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        read = make_key(c, account, ["images:read"])["key"]
        write = make_key(c, account, ["images:write"])["key"]
        listed = c.get("/v1/keys", headers=account.auth)
        assert listed.status_code == 200 and len(listed.json()["items"]) == 2
        assert read not in listed.text and write not in listed.text

        jpeg = images.jpeg(96, 64, seed=11)
        refused = c.post("/v1/upload", content=jpeg, headers=bearer(read))
        assert refused.status_code == 403 and "images:write" in refused.json()["error"]
        up = c.post(
            "/v1/upload", content=jpeg, params={"visibility": "private"}, headers=bearer(write)
        )
        assert up.status_code == 201, up.text
        name = up.json()["filename"]

        # The owner read goes from the gateway's check straight to storage.
        mine = c.get(f"/v1/user/{name}", headers=account.auth)
        assert mine.status_code == 200
        for _ in range(3):  # the check's yes is kept 1 s per credential: ask it more than once
            got = c.get(f"/v1/user/{name}", headers=bearer(read))
            assert got.status_code == 200 and got.content == mine.content
        denied = c.get(f"/v1/user/{name}", headers=bearer(write))
        assert denied.status_code in (403, 404) and denied.content != mine.content
        assert c.get("/v1/images", headers=bearer(write)).status_code == 403
        assert c.get("/v1/images", headers=bearer(read)).json()["items"][0]["filename"] == name

        check = c.get("/v1/token/validation", headers=bearer(read))
        assert check.status_code == 200 and check.headers["x-user-id"] == account.id
        assert c.get("/v1/user", headers=bearer(read)).json()["login"] == account.login

        for r in (
            c.get("/v1/keys", headers=bearer(read)),
            c.post(
                "/v1/keys", json={"name": "x", "scopes": ["images:read"]}, headers=bearer(write)
            ),
        ):
            assert r.status_code == 403 and "signed-in session" in r.json()["error"], r.text

        # Every bad key: the gateway's one 401.
        answers = set()
        for bad in ("igk_" + "A" * 54, read[:-1] + ("B" if read[-1] != "B" else "C"), "igk_x"):
            r = c.get("/v1/images", headers=bearer(bad))
            answers.add((r.status_code, r.text))
        assert len(answers) == 1 and answers.pop()[0] == 401


def test_revoked_key_refused_within_a_second_everywhere(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        made = make_key(c, account, ["images:read"])
    key = made["key"]
    targets = [(u, "/v1/token/validation") for u in stack.service_urls("security")]
    targets += [(u, "/v1/images") for u in stack.service_urls("uploader")]
    targets += [(stack.http, "/v1/images")]
    clients = [httpx.Client(base_url=u, timeout=10) for u, _ in targets]
    try:
        for client, (_, path) in zip(clients, targets, strict=True):
            assert client.get(path, headers=bearer(key)).status_code == 200  # cached as valid
        with stack.client() as c:
            assert c.delete(f"/v1/keys/{made['id']}", headers=account.auth).status_code == 204
        revoked_at = time.monotonic()
        pending = dict(enumerate(targets))
        took: dict[str, float] = {}
        while pending and time.monotonic() - revoked_at < 10:
            for i, (url, path) in list(pending.items()):
                if clients[i].get(path, headers=bearer(key)).status_code == 401:
                    took[url] = time.monotonic() - revoked_at
                    del pending[i]
            time.sleep(0.02)
        assert not pending, f"still accepted after 10 s: {pending}"
        # The bound is the services' 1 s cache; allow the polling loop's own time.
        assert max(took.values()) < 1.5, took
    finally:
        for client in clients:
            client.close()
