"""Sessions over HTTP: refresh tokens with rotation and reuse detection, logout, password change,
the refresh cookie and its CSRF checks. Runs embedded and through the gateway (where a
revocation reaches every replica through the account feed: polled for, with a deadline)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from imagegate.settings import Settings
from tests.conftest import Account, post_as_a_patient_client, register_and_login

BAD_REFRESH = {"error": "invalid or expired refresh token"}
# Revocations reach other replicas through the account feed within a second (tests/stack
# measures that); the contract allows a generous deadline for a loaded machine.
DEADLINE_SECONDS = 10.0
JSON = {"Accept": "application/json"}
# The servers under test run with the default grace period for a just-used refresh token.
REUSE_GRACE_SECONDS = Settings.model_fields["refresh_reuse_grace_seconds"].default


@dataclass
class Tokens:
    access: str
    refresh: str | None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


def _tokens(r: httpx.Response) -> Tokens:
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0
    return Tokens(body["access_token"], body.get("refresh_token"))


def login(client: httpx.Client, account: Account, query: str = "") -> Tokens:
    creds = {"login": account.login, "password": account.password}
    deadline = time.monotonic() + 120
    while True:  # the gateway rate-limits logins per address (by design): wait as told
        r = client.post(f"/v1/token{query}", json=creds, headers=JSON)
        if r.status_code != 429 or time.monotonic() > deadline:
            return _tokens(r)
        time.sleep(float(r.headers.get("retry-after", "1")))


def refresh(client: httpx.Client, token: str | None) -> httpx.Response:
    return client.post("/v1/token/refresh", json={"refresh_token": token}, headers=JSON)


def refused_everywhere(client: httpx.Client, tokens: Tokens) -> None:
    """Every authenticated route refuses the access token (polled: other replicas learn of a
    revocation from the account feed)."""
    routes: list[Callable[[], httpx.Response]] = [
        lambda: client.get("/v1/user", headers=tokens.auth),
        lambda: client.get("/v1/token/validation", headers=tokens.auth),
        lambda: client.get("/v1/images", headers=tokens.auth),
        lambda: client.get("/v1/webhooks", headers=tokens.auth),
        lambda: client.post("/v1/upload", content=b"x", headers=tokens.auth),
    ]
    for call in routes:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            r = call()
            if r.status_code == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 401, (r.request.url, r.status_code, r.text)
        assert r.json()["error"]


def test_login_json_answers_a_refresh_token_and_plain_text_is_unchanged(
    client: httpx.Client, account: Account
) -> None:
    tokens = login(client, account)
    assert tokens.refresh is not None
    assert tokens.refresh.startswith("igr_") and len(tokens.refresh) == 47  # 256 bits
    r = post_as_a_patient_client(
        client, "/v1/token", {"login": account.login, "password": account.password}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.count(".") == 2 and "refresh" not in r.text  # the bare JWT, as before
    assert client.get("/v1/user", headers={"Authorization": f"Bearer {r.text}"}).status_code == 200


def test_lifecycle_login_refresh_refresh_logout_refused(
    client: httpx.Client, account: Account
) -> None:
    first = login(client, account)
    second = _tokens(refresh(client, first.refresh))
    third = _tokens(refresh(client, second.refresh))
    assert len({first.access, second.access, third.access}) == 3
    assert len({first.refresh, second.refresh, third.refresh}) == 3
    for tokens in (first, second, third):  # one session: all of its access tokens work
        me = client.get("/v1/user", headers=tokens.auth)
        assert me.status_code == 200 and me.json()["id"] == account.id
    r = client.post("/v1/logout", headers=third.auth)
    assert r.status_code == 204, r.text
    for tokens in (first, second, third):  # the whole family ends
        refused_everywhere(client, tokens)
    r = refresh(client, third.refresh)
    assert (r.status_code, r.json()) == (401, BAD_REFRESH)
    # Another session of the same account is not touched.
    other = login(client, account)
    assert client.get("/v1/user", headers=other.auth).status_code == 200


def test_a_reused_refresh_token_ends_its_whole_session(
    client: httpx.Client, account: Account
) -> None:
    first = login(client, account)
    second = _tokens(refresh(client, first.refresh))
    # At once again (a second client of the login, a retry after a lost answer): the grace
    # period gives it the session's next token too.
    sibling = _tokens(refresh(client, first.refresh))
    assert sibling.refresh != second.refresh
    time.sleep(REUSE_GRACE_SECONDS + 0.5)
    stolen = refresh(client, first.refresh)  # used long ago: someone else holds the family
    assert (stolen.status_code, stolen.json()) == (401, BAD_REFRESH)
    for newer in (second, sibling):  # the newer tokens die with their family
        r = refresh(client, newer.refresh)
        assert (r.status_code, r.json()) == (401, BAD_REFRESH)
    refused_everywhere(client, second)
    refused_everywhere(client, sibling)
    refused_everywhere(client, first)


def test_every_bad_refresh_token_gets_the_same_answer(
    client: httpx.Client, account: Account
) -> None:
    tokens = login(client, account)
    ended = login(client, account)
    assert client.post("/v1/logout", headers=ended.auth).status_code == 204
    bad = [
        "igr_" + "A" * 43,  # well-formed, never issued
        "not-a-refresh-token",
        "",
        "igr_" + "x" * 2000,
        tokens.access,  # an access token is not a refresh token
        ended.refresh,  # of an ended session
    ]
    answers = [refresh(client, token) for token in bad]
    answers.append(client.post("/v1/token/refresh", headers=JSON))  # none at all
    for r in answers:
        assert r.status_code == 401, r.text
        assert r.json() == BAD_REFRESH
        assert r.headers["content-type"].startswith("application/json")
    # Malformed requests (not a refresh token at all) are 400, and name what is expected.
    r = client.post("/v1/token/refresh", content=b"{", headers=JSON)
    assert r.status_code == 400 and "refresh_token" in r.json()["error"]
    r = client.post("/v1/token/refresh", json={"refresh_token": 5}, headers=JSON)
    assert r.status_code == 400


def test_logout_all_ends_every_session_of_the_account(
    client: httpx.Client, account: Account
) -> None:
    a, b = login(client, account), login(client, account)
    plain = account.token  # the fixture's text/plain login
    other = register_and_login(client)  # another account is not touched
    assert client.post("/v1/logout?all=true", headers=a.auth).status_code == 204
    for tokens in (a, b, Tokens(plain, None)):
        refused_everywhere(client, tokens)
    for token in (a.refresh, b.refresh):
        assert refresh(client, token).status_code == 401
    assert client.get("/v1/user", headers=other.auth).status_code == 200
    assert client.post("/v1/logout", headers=a.auth).status_code == 401  # already out


def test_logout_needs_a_valid_token(client: httpx.Client) -> None:
    assert client.post("/v1/logout").status_code == 401
    r = client.post("/v1/logout", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_password_change_ends_other_sessions_and_answers_fresh_tokens(
    client: httpx.Client, account: Account
) -> None:
    mine, elsewhere = login(client, account), login(client, account)
    new_password = account.password + "-changed"
    url = "/v1/user/password"
    # Refusals change nothing.
    wrong = client.put(
        url,
        json={"current_password": "wrong " + account.password, "new_password": new_password},
        headers=mine.auth,
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "wrong password"
    weak = client.put(
        url, json={"current_password": account.password, "new_password": "short"}, headers=mine.auth
    )
    assert weak.status_code == 422 and "at least" in weak.json()["error"]
    assert (
        client.put(url, json={"new_password": new_password}, headers=mine.auth).status_code == 400
    )
    body = {"current_password": account.password, "new_password": new_password}
    assert client.put(url, json=body).status_code == 401  # no token
    assert client.get("/v1/user", headers=elsewhere.auth).status_code == 200

    changed = client.put(url, json=body, headers={**mine.auth, **JSON})
    fresh = _tokens(changed)
    assert fresh.refresh is not None
    for tokens in (mine, elsewhere):
        refused_everywhere(client, tokens)
        assert refresh(client, tokens.refresh).status_code == 401
    assert client.get("/v1/user", headers=fresh.auth).status_code == 200
    _tokens(refresh(client, fresh.refresh))
    old = post_as_a_patient_client(
        client, "/v1/token", {"login": account.login, "password": account.password}
    )
    assert old.status_code == 401
    account.password = new_password
    login(client, account)


COOKIE = "imagegate_refresh"


def _cookie_of(r: httpx.Response) -> tuple[str, str]:
    """The refresh cookie's value and its whole Set-Cookie line."""
    for line in r.headers.get_list("set-cookie"):
        if line.startswith(f"{COOKIE}="):
            return line.split(";", 1)[0].split("=", 1)[1], line
    raise AssertionError(f"no {COOKIE} cookie in {r.headers.get_list('set-cookie')}")


def test_refresh_cookie_flow_with_csrf_checks(client: httpx.Client, account: Account) -> None:
    creds = {"login": account.login, "password": account.password}
    csrf = {"X-Requested-With": "imagegate"}
    # A login that would set the cookie needs the same proof: a cross-site form could otherwise
    # sign the browser into another account.
    r = post_as_a_patient_client(client, "/v1/token?refresh=cookie", creds)
    assert r.status_code == 403 and "X-Requested-With" in r.json()["error"]
    assert not [c for c in r.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")]
    r = post_as_a_patient_client(client, "/v1/token?refresh=cookie", creds, csrf)
    # (post_as_a_patient_client sends no Accept: the body is the bare JWT; the cookie rides.)
    assert r.status_code == 200 and r.text.count(".") == 2
    value, line = _cookie_of(r)
    attributes = {part.strip().lower() for part in line.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/v1/token"} <= attributes
    assert value.startswith("igr_")
    cookie = {"Cookie": f"{COOKIE}={value}"}

    # A cross-site form could send the cookie, never a custom header: refused.
    r = client.post("/v1/token/refresh", headers={**JSON, **cookie})
    assert r.status_code == 403 and "X-Requested-With" in r.json()["error"]
    evil = {**JSON, **cookie, **csrf, "Origin": "https://evil.example"}
    r = client.post("/v1/token/refresh", headers=evil)
    assert r.status_code == 403 and r.json()["error"] == "cross-site request refused"
    r = client.post(
        "/v1/token/refresh", headers={**JSON, **cookie, **csrf, "Sec-Fetch-Site": "cross-site"}
    )
    assert r.status_code == 403
    # The refused requests used nothing up: the same cookie still refreshes, once.
    origin = f"{client.base_url.scheme}://{client.base_url.host}"
    same = {**JSON, **cookie, **csrf, "Origin": origin}
    r = client.post("/v1/token/refresh", headers=same)
    tokens = _tokens(r)
    assert tokens.refresh is None  # it stays in the cookie, never in the body
    rotated, _ = _cookie_of(r)
    assert rotated != value
    assert client.get("/v1/user", headers=tokens.auth).status_code == 200
    # Revoking by cookie (a browser without its access token) ends the session.
    r = client.post("/v1/token/revoke", headers={**cookie, "Cookie": f"{COOKIE}={rotated}"})
    assert r.status_code == 403  # the same CSRF rule
    r = client.post("/v1/token/revoke", headers={**csrf, "Cookie": f"{COOKIE}={rotated}"})
    assert r.status_code == 204
    assert _cookie_of(r)[0] in ("", '""')  # cleared
    refused_everywhere(client, tokens)
    r = client.post("/v1/token/refresh", headers={**JSON, **csrf, "Cookie": f"{COOKIE}={rotated}"})
    assert (r.status_code, r.json()) == (401, BAD_REFRESH)


def test_revoke_answers_204_for_any_token(client: httpx.Client) -> None:
    r = client.post("/v1/token/revoke", json={"refresh_token": "igr_" + "B" * 43})
    assert r.status_code == 204


@pytest.mark.parametrize("path", ["/v1/token/refresh", "/v1/token/revoke"])
def test_refresh_routes_refuse_a_body_of_another_shape(client: httpx.Client, path: str) -> None:
    r = client.post(path, json={"refresh_token": "igr_" + "C" * 43, "more": 1})
    assert r.status_code == 400
    r = client.post(path, json=["igr_"])
    assert r.status_code == 400
