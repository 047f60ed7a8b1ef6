"""Owner reads through the gateway: repeated ones skip Python, and every guarantee holds.

A plain GET of /v1/user/{name} (or a variant) asks the uploader once per token, URL and format
and second, then NGINX fetches the bytes from storage with the presigned path it got
(deploy/nginx/imagegate-routes.conf.template).
"""

from __future__ import annotations

import time

import httpx

from tests.conftest import Account, register_and_login
from tests.stack.conftest import Stack
from tests.support import images

# The services' bound for a deleted account (IMAGEGATE_ACCOUNT_FEED_MAX_LAG_SECONDS) plus the
# gateway's 1 s reuse of a yes.
ACCOUNT_BOUND_SECONDS = 2.0


def access_checks(stack: Stack) -> float:
    """Owner-read checks answered by all uploader replicas so far."""
    total = 0.0
    for base in stack.service_urls("uploader"):
        for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
            if line.startswith("imagegate_http_requests_total{") and "/v1/access/" in line:
                total += float(line.rpartition(" ")[2])
    return total


def _private(c: httpx.Client, account: Account, seed: int = 0) -> dict[str, str]:
    r = c.post(
        "/v1/upload",
        content=images.jpeg(300, 200, seed=seed),
        headers=account.auth,
        params={"visibility": "private"},
    )
    assert r.status_code == 201, r.text
    body: dict[str, str] = r.json()
    return body


def test_repeated_owner_reads_skip_the_uploader(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        image = _private(c, account)
        url = f"/v1/user/{image['filename']}"
        before, started = access_checks(stack), time.monotonic()
        first = c.get(url, headers=account.auth)
        assert first.status_code == 200
        for _ in range(100):
            r = c.get(url, headers=account.auth)
            assert r.status_code == 200 and r.content == first.content
            assert r.headers["ETag"] == f'"{image["sha256"]}"'
            assert r.headers["Cache-Control"] == "private, max-age=0, must-revalidate"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        elapsed = time.monotonic() - started
        checks = access_checks(stack) - before
        # The first read was checked; then at most one check per second the loop took (and
        # one for the second it ends in), however many reads: without the reuse, 101.
        assert 1 <= checks <= elapsed + 2, (elapsed, checks)


def test_owner_reads_keep_their_answers(stack: Stack) -> None:
    with stack.client() as c:
        owner, other = register_and_login(c), register_and_login(c)
        image = _private(c, owner, seed=1)
        url = f"/v1/user/{image['filename']}"
        assert c.get(url, headers=owner.auth).status_code == 200
        etag = f'"{image["sha256"]}"'
        assert c.get(url, headers={**owner.auth, "If-None-Match": etag}).status_code == 304
        part = c.get(url, headers={**owner.auth, "Range": "bytes=0-9"})
        assert part.status_code == 206 and len(part.content) == 10
        head = c.head(url, headers=owner.auth)
        assert head.status_code == 200 and head.headers["ETag"] == etag
        for auth in (other.auth, {}, {"Authorization": "Bearer x.y.zzzzzzzzzzzzzzzzzzzz"}):
            r = c.get(url, headers=auth)
            assert r.status_code in (401, 404) and r.json()["error"], (auth, r.status_code)
        assert c.get(url, headers=other.auth).status_code == 404
        thumb = c.get(f"/v1/user/thumb/{image['filename']}", headers=owner.auth)
        assert thumb.status_code == 200 and "accept" in thumb.headers["Vary"].lower()
        # The check itself is the gateway's, not a route of the API.
        access = c.get(f"/v1/access/v1/user/{image['filename']}", headers=owner.auth)
        assert access.status_code == 404


def test_a_deleted_image_is_refused_at_once(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        image = _private(c, account, seed=2)
        url = f"/v1/user/{image['filename']}"
        for _ in range(3):
            assert c.get(url, headers=account.auth).status_code == 200  # a cached yes
        assert c.delete(f"/v1/images/{image['filename']}", headers=account.auth).status_code == 204
        # Storage refuses the presigned path of a deleted object: no reuse outlives it.
        gone = c.get(url, headers=account.auth)
        assert gone.status_code == 404 and gone.json()["error"] == "no such image"


def test_a_deleted_accounts_reads_stop_within_the_bound(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        image = _private(c, account, seed=3)
        url = f"/v1/user/{image['filename']}"
        assert c.get(url, headers=account.auth).status_code == 200
        r = c.request(
            "DELETE", "/v1/user", json={"password": account.password}, headers=account.auth
        )
        assert r.status_code == 204
        deleted_at = time.monotonic()
        while c.get(url, headers=account.auth).status_code == 200:
            assert time.monotonic() - deleted_at < ACCOUNT_BOUND_SECONDS + 1, "still readable"
        refused_after = time.monotonic() - deleted_at
    assert refused_after < ACCOUNT_BOUND_SECONDS, refused_after


def test_a_token_that_borrows_the_owners_signature_gets_nothing(stack: Stack) -> None:
    """The reuse is keyed by the whole token: another header and payload with the owner's
    signature miss it, and the uploader refuses them (the auth cache, keyed by the signature
    alone, may pass them on, but nothing there hands out bytes)."""
    with stack.client() as c:
        owner, stranger = register_and_login(c), register_and_login(c)
        image = _private(c, owner, seed=4)
        url = f"/v1/user/{image['filename']}"
        assert c.get(url, headers=owner.auth).status_code == 200  # the owner's yes, kept 1 s
        head, payload, _ = stranger.token.split(".")
        signature = owner.token.split(".")[2]
        forged = {"Authorization": f"Bearer {head}.{payload}.{signature}"}
        for _ in range(3):
            r = c.get(url, headers=forged)
            assert r.status_code == 401 and r.json()["error"], r.status_code
