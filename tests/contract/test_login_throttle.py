"""The login throttle's contract: parallel guesses, device cookies, and /v1/token's input errors.

These run against a server with the default settings or through the gateway, which has its own
per-address limit on /v1/token (a 429 of its own): every assertion holds either way. Each test
uses fresh logins and fresh loopback source addresses, so no two share throttle counters.
Blocks last ``IMAGEGATE_LOGIN_LOCKOUT_SECONDS`` (60 s by default): a step that must happen
inside a block checks afterwards that a stranger is still refused, and fails saying so if not.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie

import httpx
import pytest

from tests.conftest import Target, new_login, new_password
from tests.support.burst import burst

_ADDRESSES = iter(
    f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{i}" for i in range(1, 255)
)
MAX_FAILURES = 5  # the default login_max_failures
SHORTEST_BLOCK = 60.0  # the default login_lockout_seconds


def fresh_address() -> str:
    return next(_ADDRESSES)


def client_from(target: Target, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address, verify=target.verify)
    return httpx.Client(base_url=target.base_url, transport=transport, timeout=60)


@pytest.fixture
def creds(client: httpx.Client) -> dict[str, str]:
    body = {"login": new_login(), "password": new_password()}
    assert client.post("/v1/register", json=body).status_code == 201
    return body


def wrong(creds: dict[str, str]) -> dict[str, str]:
    return {**creds, "password": "not the password at all"}


def lock(target: Target, creds: dict[str, str]) -> float:
    """Five wrong passwords from five addresses; the monotonic time the block started."""
    for _ in range(MAX_FAILURES):
        with client_from(target, fresh_address()) as c:
            assert c.post("/v1/token", json=wrong(creds)).status_code == 401
    return time.monotonic()


def still_locked(target: Target, creds: dict[str, str], since: float) -> None:
    """The lock taken at ``since`` held through the step just taken (else the step proves
    nothing): a stranger with the right password is still refused now, so it was then."""
    with client_from(target, fresh_address()) as stranger:
        status = stranger.post("/v1/token", json=creds).status_code
    if status != 429:
        pytest.fail(
            f"the login was no longer locked after the step (a stranger got {status}, "
            f"{time.monotonic() - since:.0f} s after the lock): either the step lifted the "
            f"lock, or it took longer than the shortest block ({SHORTEST_BLOCK:.0f} s), which "
            "is a failure too"
        )


@pytest.fixture
def owner(target: Target, creds: dict[str, str]) -> Iterator[httpx.Client]:
    """A client that logged in before: it holds the login's device cookie."""
    with client_from(target, fresh_address()) as c:
        assert c.post("/v1/token", json=creds).status_code == 200
        assert "imagegate_device" in c.cookies
        yield c


def test_parallel_guesses_from_many_addresses_get_at_most_five_checks(
    target: Target, creds: dict[str, str]
) -> None:
    start = time.monotonic()
    addresses = [fresh_address() for _ in range(8)]
    statuses = burst(lambda a: client_from(target, a), addresses, [wrong(creds)] * 40)
    blocks = 1 + int((time.monotonic() - start) // SHORTEST_BLOCK)  # 1 unless very slow
    assert set(statuses) <= {401, 429}
    assert 1 <= statuses.count(401) <= MAX_FAILURES * blocks


def test_a_right_password_inside_a_throttled_burst_gets_429(
    target: Target, creds: dict[str, str]
) -> None:
    since = lock(target, creds)
    bodies = [creds if i % 3 == 0 else wrong(creds) for i in range(24)]
    statuses = burst(lambda a: client_from(target, a), [fresh_address() for _ in range(6)], bodies)
    still_locked(target, creds, since)
    assert set(statuses) == {429}


def test_the_device_cookie_is_httponly_strict_and_scoped_to_the_token_route(
    target: Target, creds: dict[str, str]
) -> None:
    with client_from(target, fresh_address()) as c:
        r = c.post("/v1/token", json=creds)
    assert r.status_code == 200
    cookie = SimpleCookie()
    cookie.load(r.headers["set-cookie"])
    morsel = cookie["imagegate_device"]
    assert morsel["httponly"]
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/v1/token"
    assert int(morsel["max-age"]) > 0
    # Secure exactly when the client came over HTTPS (through the gateway too).
    assert bool(morsel["secure"]) == target.base_url.startswith("https://")
    assert len(morsel.value) >= 40  # 256 random bits


def test_the_owners_device_logs_in_while_the_login_is_locked_for_everyone_else(
    target: Target, creds: dict[str, str], owner: httpx.Client
) -> None:
    since = lock(target, creds)
    with client_from(target, fresh_address()) as stranger:
        refused = stranger.post("/v1/token", json=creds)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "too many" in refused.json()["error"]
    ok = owner.post("/v1/token", json=creds)
    still_locked(target, creds, since)
    assert ok.status_code == 200, ok.text
    assert ok.text.count(".") == 2
    # The cookie never stands in for the password.
    assert owner.post("/v1/token", json=wrong(creds)).status_code == 401
    assert owner.post("/v1/token", json=creds).status_code == 200


def test_a_device_cookie_counts_only_for_its_own_login(
    target: Target, client: httpx.Client, creds: dict[str, str], owner: httpx.Client
) -> None:
    other = {"login": new_login(), "password": new_password()}
    assert client.post("/v1/register", json=other).status_code == 201
    since = lock(target, other)
    r = owner.post("/v1/token", json=other)  # creds' device, other's login
    still_locked(target, other, since)
    assert r.status_code == 429
    # A forged cookie is no device either.
    with client_from(target, fresh_address()) as forger:
        forger.cookies.set("imagegate_device", "A" * 43, path="/v1/token")
        assert forger.post("/v1/token", json=other).status_code == 429


def test_failures_on_a_device_block_the_device_not_the_login(
    target: Target, creds: dict[str, str], owner: httpx.Client
) -> None:
    for _ in range(MAX_FAILURES):
        assert owner.post("/v1/token", json=wrong(creds)).status_code == 401
    # One request: inside the block (the client gives up after 60 s, the shortest block).
    refused = owner.post("/v1/token", json=creds)
    assert refused.status_code == 429, refused.text
    with client_from(target, fresh_address()) as elsewhere:
        assert elsewhere.post("/v1/token", json=creds).status_code == 200


DEEP = b'{"login": "someone", "password": ' + b"[" * 1000 + b"]" * 1000 + b"}"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (DEEP, "nested"),
        (b"[" * 20000 + b"]" * 20000, "nested"),
        (b'{"login": "someone", "password": "\\ud800 and more"}', "unicode"),
        (b'{"login": "\\udfffsomeone", "password": "a long passphrase"}', "unicode"),
        (b'{"login": "someone", "password": "\xff\xfe"}', "utf-8"),
        (b'{"login": "someone", "password": "' + b"p" * 1025 + b'"}', "at most 1024"),
    ],
    ids=[
        "nested-1000",
        "nested-20000",
        "surrogate-password",
        "surrogate-login",
        "bad-utf8",
        "long",
    ],
)
def test_token_rejects_hostile_bodies_with_a_short_400(
    target: Target, body: bytes, needle: str
) -> None:
    with client_from(target, fresh_address()) as c:
        r = c.post("/v1/token", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"].lower()
    assert len(r.content) < 300  # an error message, not a traceback


def test_bad_bodies_are_not_guesses(target: Target, creds: dict[str, str]) -> None:
    with client_from(target, fresh_address()) as c:
        for _ in range(3 * MAX_FAILURES):
            r = c.post("/v1/token", content=DEEP, headers={"Content-Type": "application/json"})
            assert r.status_code == 400
        assert c.post("/v1/token", json=creds).status_code == 200


def test_register_rejects_a_password_with_a_lone_surrogate(client: httpx.Client) -> None:
    body = b'{"login": "%s", "password": "twelve chars or more \\ud800"}' % new_login().encode()
    r = client.post("/v1/register", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert "unicode" in r.json()["error"].lower()
