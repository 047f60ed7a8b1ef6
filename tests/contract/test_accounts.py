"""Registration, login, the caller's info, and login throttling."""

from __future__ import annotations

import random

import httpx
import pytest

from tests.conftest import Account, Target, new_login, new_password

_ADDRESSES = iter(
    f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{i}" for i in range(1, 255)
)


def fresh_address() -> str:
    """A loopback source address no earlier run used: its throttle counters start at zero."""
    return next(_ADDRESSES)


def client_from(target: Target, address: str) -> httpx.Client:
    """A client whose connections come from another loopback address (its own throttle key)."""
    transport = httpx.HTTPTransport(local_address=address, verify=target.verify)
    return httpx.Client(base_url=target.base_url, transport=transport, timeout=60)


@pytest.mark.parametrize("path", ["/v1/register", "/v1/user"])
def test_register_returns_the_account(client: httpx.Client, path: str) -> None:
    login = new_login()
    r = client.post(path, json={"login": login, "password": new_password()})
    assert r.status_code == 201
    body = r.json()
    assert body["login"] == login
    assert set(body) == {"id", "login", "created_at"}


def test_register_login_is_unique_case_insensitively(client: httpx.Client) -> None:
    login = new_login()
    assert (
        client.post("/v1/register", json={"login": login, "password": new_password()}).status_code
        == 201
    )
    r = client.post("/v1/register", json={"login": login.upper(), "password": new_password()})
    assert r.status_code == 409
    assert "taken" in r.json()["error"]


@pytest.mark.parametrize(
    ("login", "password", "needle"),
    [
        ("ok-login", "short", "at least 12"),
        ("ok-login", "x" * 1025, "at most 1024"),
        ("samesame12345", "samesame12345", "same as the login"),
        ("ok-login", "password1234", "too common"),
        ("ab", "a perfectly fine passphrase", "login"),
        ("has space", "a perfectly fine passphrase", "login"),
        ("x" * 65, "a perfectly fine passphrase", "login"),
        ("émile", "a perfectly fine passphrase", "login"),
    ],
)
def test_register_rejects_policy_violations(
    client: httpx.Client, login: str, password: str, needle: str
) -> None:
    if login == "ok-login":
        login = new_login()
    r = client.post("/v1/register", json={"login": login, "password": password})
    assert r.status_code == 422
    assert needle in r.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"login": "abc"}',
        b'{"login": 1, "password": "x"}',
        b'{"login": "abcd", "password": "a fine passphrase", "admin": true}',
    ],
)
def test_register_rejects_bad_shapes(client: httpx.Client, body: bytes) -> None:
    r = client.post("/v1/register", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]


def test_long_passwords_are_not_truncated(target: Target, client: httpx.Client) -> None:
    login, password = new_login(), "p" * 100 + new_password() + "q" * 900
    assert (
        client.post("/v1/register", json={"login": login, "password": password}).status_code == 201
    )
    near_miss = password[:-1] + "r"
    with client_from(target, fresh_address()) as c:  # a failure: keep it off our address
        assert c.post("/v1/token", json={"login": login, "password": near_miss}).status_code == 401
    assert client.post("/v1/token", json={"login": login, "password": password}).status_code == 200


def test_token_is_plain_text_by_default_and_json_on_request(
    client: httpx.Client, account: Account
) -> None:
    creds = {"login": account.login, "password": account.password}
    plain = client.post("/v1/token", json=creds)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.text.count(".") == 2
    as_json = client.post("/v1/token", json=creds, headers={"Accept": "application/json"})
    body = as_json.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["access_token"].count(".") == 2


def test_login_is_case_insensitive(client: httpx.Client, account: Account) -> None:
    r = client.post(
        "/v1/token", json={"login": account.login.upper(), "password": account.password}
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body", [b"", b"nope", b"[1]", b'{"login": "a"}', b'{"login": 1, "password": 2}']
)
def test_token_rejects_malformed_bodies(client: httpx.Client, body: bytes) -> None:
    r = client.post("/v1/token", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "login" in r.json()["error"]


def test_unknown_login_and_wrong_password_look_the_same(target: Target, account: Account) -> None:
    with client_from(target, fresh_address()) as c:
        wrong = c.post("/v1/token", json={"login": account.login, "password": "wrong password!"})
        unknown = c.post("/v1/token", json={"login": new_login(), "password": "wrong password!"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": "invalid login or password"}


def test_repeated_failures_on_a_login_are_throttled(target: Target, client: httpx.Client) -> None:
    login, password = new_login(), new_password()
    client.post("/v1/register", json={"login": login, "password": password})
    # Each attempt from its own address: only the per-login counter can trip.
    for _ in range(5):
        with client_from(target, fresh_address()) as c:
            assert (
                c.post("/v1/token", json={"login": login, "password": "bad" * 5}).status_code == 401
            )
    with client_from(target, fresh_address()) as c:
        r = c.post("/v1/token", json={"login": login, "password": password})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert "too many" in r.json()["error"]


def test_repeated_failures_from_an_address_are_throttled(
    target: Target, client: httpx.Client, account: Account
) -> None:
    with client_from(target, fresh_address()) as c:
        for _ in range(5):
            r = c.post("/v1/token", json={"login": new_login(), "password": "bad password"})
            assert r.status_code == 401
        blocked = c.post("/v1/token", json={"login": account.login, "password": account.password})
        assert blocked.status_code == 429
        assert int(blocked.headers["Retry-After"]) > 0
    # Another address is unaffected.
    assert (
        client.post(
            "/v1/token", json={"login": account.login, "password": account.password}
        ).status_code
        == 200
    )


def test_user_info_reports_the_caller(client: httpx.Client, account: Account) -> None:
    r = client.get("/v1/user", headers=account.auth)
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == account.id
    assert body["login"] == account.login
    assert body["images"] == 0
    assert body["bytes"] == 0


def test_user_info_ignores_identity_headers_from_the_client(
    client: httpx.Client, make_account: object
) -> None:
    alice, mallory = make_account(), make_account()  # type: ignore[operator]
    r = client.get(
        "/v1/user", headers={**mallory.auth, "X-User-Id": alice.id, "X-User-Login": alice.login}
    )
    assert r.json()["id"] == mallory.id
    anon = client.get("/v1/user", headers={"X-User-Id": alice.id})
    assert anon.status_code == 401


def test_client_sent_forwarded_for_does_not_dodge_the_address_throttle(target: Target) -> None:
    with client_from(target, fresh_address()) as c:
        for i in range(5):
            r = c.post(
                "/v1/token",
                json={"login": new_login(), "password": "bad password"},
                headers={"X-Forwarded-For": f"198.51.100.{i}", "X-Real-IP": f"198.51.100.{i}"},
            )
            assert r.status_code == 401
        r = c.post(
            "/v1/token",
            json={"login": new_login(), "password": "bad password"},
            headers={"X-Forwarded-For": "198.51.100.77"},
        )
        assert r.status_code == 429
