"""Sessions against a real ``imagegate serve``: refresh guesses throttled per client address
(429 + Retry-After, even for a good token while blocked, without touching logins), refresh
tokens stored only as hashes, account deletion taking its sessions along, and API keys refused
by the session routes. Windows and blocks are set to an hour: nothing depends on speed."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Account, new_login, new_password
from tests.support.server import ServerProcess

HOUR = "3600"
MAX_FAILURES = 3
SETTINGS = {
    "IMAGEGATE_TRUSTED_PROXIES": "",  # the peer address is the throttle's key
    "IMAGEGATE_REFRESH_MAX_FAILURES": str(MAX_FAILURES),
    "IMAGEGATE_LOGIN_WINDOW_SECONDS": HOUR,
    "IMAGEGATE_LOGIN_LOCKOUT_SECONDS": HOUR,
    "IMAGEGATE_LOGIN_LOCKOUT_MAX_SECONDS": HOUR,
}
JSON = {"Accept": "application/json"}
BAD_REFRESH = {"error": "invalid or expired refresh token"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("sessions") / "data", env=SETTINGS).start()
    yield server
    server.stop()


def client_from(server: ServerProcess, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.base_url, transport=transport, timeout=60)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with client_from(server, "127.0.0.1") as c:
        yield c


def signed_up(http: httpx.Client) -> tuple[Account, str]:
    """A new account, its access token and its refresh token (a JSON login)."""
    creds = {"login": new_login(), "password": new_password()}
    r = http.post("/v1/register", json=creds)
    assert r.status_code == 201, r.text
    t = http.post("/v1/token", json=creds, headers=JSON)
    assert t.status_code == 200, t.text
    body = t.json()
    account = Account(r.json()["id"], creds["login"], creds["password"], body["access_token"])
    return account, body["refresh_token"]


def db(server: ServerProcess) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(server.data_dir / "imagegate.db"))


def test_refresh_guesses_are_throttled_per_address(server: ServerProcess) -> None:
    with client_from(server, "127.0.0.31") as guesser, client_from(server, "127.0.0.32") as other:
        account, good = signed_up(other)
        for i in range(MAX_FAILURES):
            r = guesser.post("/v1/token/refresh", json={"refresh_token": f"igr_{i:043d}"})
            assert (r.status_code, r.json()) == (401, BAD_REFRESH)
        # A malformed token is refused without a lookup (the same 401), and not counted.
        for junk in ("", "igr_short", "x" * 5000):
            r = guesser.post("/v1/token/refresh", json={"refresh_token": junk})
            assert (r.status_code, r.json()) == (401, BAD_REFRESH)
        r = guesser.post("/v1/token/refresh", json={"refresh_token": "igr_" + "Z" * 43})
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 3600
        assert "refresh" in r.json()["error"]
        # Blocked means blocked: even a good token from that address waits, and stays unused.
        r = guesser.post("/v1/token/refresh", json={"refresh_token": good}, headers=JSON)
        assert r.status_code == 429
        # Another address is not blocked, and the token was not used up by the refused call.
        r = other.post("/v1/token/refresh", json={"refresh_token": good}, headers=JSON)
        assert r.status_code == 200, r.text
        # Logins from the blocked address have their own budget.
        creds = {"login": account.login, "password": account.password}
        assert guesser.post("/v1/token", json=creds).status_code == 200


def test_good_refreshes_give_their_attempt_back(server: ServerProcess) -> None:
    # Many clients behind one address refresh far more often than the failure budget.
    with client_from(server, "127.0.0.33") as busy:
        _, token = signed_up(busy)
        for _ in range(MAX_FAILURES * 3):
            r = busy.post("/v1/token/refresh", json={"refresh_token": token}, headers=JSON)
            assert r.status_code == 200, r.text
            token = r.json()["refresh_token"]


def test_refresh_tokens_are_stored_only_as_hashes(
    server: ServerProcess, http: httpx.Client
) -> None:
    account, token = signed_up(http)
    r = http.post("/v1/token/refresh", json={"refresh_token": token}, headers=JSON)
    newer = r.json()["refresh_token"]
    with db(server) as conn:
        rows = conn.execute(
            "SELECT t.token_hash, s.user_id FROM refresh_tokens t "
            "JOIN sessions s ON s.id = t.session_id WHERE s.user_id = ?",
            (account.id,),
        ).fetchall()
    hashes = {h for h, _ in rows}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in (token, newer)}
    raw = b"".join(p.read_bytes() for p in server.data_dir.glob("imagegate.db*"))  # and -wal
    for t in (token, newer):
        assert t.encode() not in raw and t[4:].encode() not in raw


def test_account_deletion_ends_its_sessions(server: ServerProcess, http: httpx.Client) -> None:
    account, token = signed_up(http)
    r = http.request(
        "DELETE", "/v1/user", json={"password": account.password}, headers=account.auth
    )
    assert r.status_code == 204, r.text
    with db(server) as conn:
        left = conn.execute("SELECT count(*) FROM sessions WHERE user_id = ?", (account.id,))
        assert left.fetchone() == (0,)
    r = http.post("/v1/token/refresh", json={"refresh_token": token}, headers=JSON)
    assert (r.status_code, r.json()) == (401, BAD_REFRESH)
    assert http.get("/v1/user", headers=account.auth).status_code == 401


def test_api_keys_cannot_log_out_change_the_password_or_delete(http: httpx.Client) -> None:
    account, _ = signed_up(http)
    r = http.post(
        "/v1/keys",
        json={"name": "ci", "scopes": ["images:read", "images:write"]},
        headers=account.auth,
    )
    if r.status_code == 404:
        pytest.skip("no API keys in this build")
    assert r.status_code == 201, r.text
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    change = {"current_password": account.password, "new_password": account.password + "-x"}
    for attempt in (
        http.post("/v1/logout", headers=key),
        http.post("/v1/logout?all=true", headers=key),
        http.put("/v1/user/password", json=change, headers=key),
        http.request("DELETE", "/v1/user", json={"password": account.password}, headers=key),
    ):
        assert attempt.status_code == 403, (attempt.request.url, attempt.text)
        assert "signed-in session" in attempt.json()["error"]
    # Nothing changed: the session and the password still work.
    assert http.get("/v1/user", headers=account.auth).status_code == 200
    creds = {"login": account.login, "password": account.password}
    assert http.post("/v1/token", json=creds).status_code == 200


def test_strangers_failing_logins_do_not_lock_a_signed_in_person_out_of_their_password(
    server: ServerProcess,
) -> None:
    """Password change and account deletion confirm the password on the session's own budget:
    failed logins on the name (anyone can make them) leave it alone, and its own wrong
    guesses are throttled all the same."""
    with client_from(server, "127.0.0.1") as http:
        account, _ = signed_up(http)
    with client_from(server, "127.0.0.5") as stranger:
        for _ in range(10):
            r = stranger.post(
                "/v1/token", json={"login": account.login, "password": "not it at all"}
            )
            if r.status_code == 429:
                break
            assert r.status_code == 401, r.text
        assert r.status_code == 429  # the login is locked for password logins now
    with client_from(server, "127.0.0.1") as http:
        url = "/v1/user/password"
        fresh = new_password()
        change = {"current_password": account.password, "new_password": fresh}
        r = http.put(url, json=change, headers=account.auth)
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        wrong = {"current_password": "not the password", "new_password": new_password()}
        answers = [http.put(url, json=wrong, headers=auth).status_code for _ in range(8)]
        assert answers[0] == 401 and answers[-1] == 429, answers
