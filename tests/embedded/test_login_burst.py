"""Login bursts against a real server with no trusted proxies: the throttle reserves before it
checks, so parallel guesses from many source addresses get at most ``login_max_failures``
password checks, a right password inside a throttled burst does not log in, and the owner's
device cookie still logs in while the login is locked for everyone else. Also: a full disk.

Blocks and windows are set to an hour, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from tests.contract.test_ops import metric, metric_samples
from tests.support.burst import burst
from tests.support.disk import small_tmpfs
from tests.support.server import ServerProcess

OWNER = {"login": "bob", "password": "qwe123"}  # --demo's account
WRONG = {"login": "bob", "password": "not the password"}
HOUR = "3600"
SETTINGS = {
    "IMAGEGATE_TRUSTED_PROXIES": "",  # the peer address is the throttle's address key
    "IMAGEGATE_LOGIN_MAX_FAILURES": "5",
    "IMAGEGATE_LOGIN_WINDOW_SECONDS": HOUR,
    "IMAGEGATE_LOGIN_LOCKOUT_SECONDS": HOUR,
    "IMAGEGATE_LOGIN_LOCKOUT_MAX_SECONDS": HOUR,
    "IMAGEGATE_LOG_LEVEL": "info",
}


def client_from(server: ServerProcess, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.base_url, transport=transport, timeout=120)


def logins(server: ServerProcess, outcome: str) -> float:
    page = httpx.get(server.base_url + "/metrics", timeout=30).text
    return metric(metric_samples(page), "imagegate_logins_total", outcome=outcome)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("burst") / "data", env=SETTINGS).start()
    yield server
    server.stop()


def device_cookie(response: httpx.Response) -> SimpleCookie:
    cookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    assert "imagegate_device" in cookie
    return cookie


def test_a_burst_gets_five_checks_and_the_owners_device_still_logs_in(
    server: ServerProcess,
) -> None:
    # The owner logged in on this client before the attack: it holds a device cookie.
    with httpx.Client(base_url=server.base_url, timeout=120) as owner:
        _attack_while_the_owner_holds_a_cookie(server, owner)


def _attack_while_the_owner_holds_a_cookie(server: ServerProcess, owner: httpx.Client) -> None:
    first = owner.post("/v1/token", json=OWNER)
    assert first.status_code == 200
    morsel = device_cookie(first)["imagegate_device"]
    assert morsel["httponly"] and morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/v1/token" and int(morsel["max-age"]) > 0
    assert not morsel["secure"]  # plain HTTP, and no proxy said otherwise

    failed_before, ok_before = logins(server, "failed"), logins(server, "ok")
    attackers = [f"127.0.0.{i}" for i in range(2, 61)]
    statuses = burst(lambda a: client_from(server, a), attackers, [WRONG] * 300)
    assert statuses.count(401) == 5, statuses
    assert statuses.count(429) == 295
    assert logins(server, "failed") - failed_before == 5  # five password checks, no more
    assert logins(server, "ok") == ok_before

    # The right password inside a throttled burst gets the same 429 as the rest.
    more = [f"127.0.1.{i}" for i in range(1, 21)]
    mixed = [OWNER if i % 4 == 0 else WRONG for i in range(80)]
    assert set(burst(lambda a: client_from(server, a), more, mixed)) == {429}
    assert logins(server, "ok") == ok_before
    assert logins(server, "failed") - failed_before == 5

    # Without the cookie the owner is locked out like everyone else; with it, not.
    with httpx.Client(base_url=server.base_url, timeout=120) as cookieless:
        locked = cookieless.post("/v1/token", json=OWNER)
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    again = owner.post("/v1/token", json=OWNER)
    assert again.status_code == 200, again.text
    rotated = device_cookie(again)["imagegate_device"].value
    assert rotated != morsel.value  # a new cookie each login; the old one is gone
    # The cookie never replaces the password.
    assert owner.post("/v1/token", json=WRONG).status_code == 401
    assert owner.post("/v1/token", json=OWNER).status_code == 200
    # The replaced cookie no longer counts as a device: the login's block applies to it.
    with httpx.Client(base_url=server.base_url, timeout=120) as stale:
        stale.cookies.set("imagegate_device", morsel.value, path="/v1/token")
        assert stale.post("/v1/token", json=OWNER).status_code == 429


def test_a_device_cookie_has_its_own_budget_and_counts_only_for_its_login(
    server: ServerProcess,
) -> None:
    carol = {"login": "carol-device", "password": "a long enough passphrase"}
    erin = {"login": "erin-device", "password": "another long passphrase"}
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        for creds in (carol, erin):
            assert c.post("/v1/register", json=creds).status_code == 201
        assert c.post("/v1/token", json=carol).status_code == 200
        assert "imagegate_device" in c.cookies
        # Strangers lock erin's login; carol's cookie is no device of erin's.
        for i in range(5):
            with client_from(server, f"127.0.2.{i + 1}") as stranger:
                wrong = {**erin, "password": "wrong passphrase!"}
                assert stranger.post("/v1/token", json=wrong).status_code == 401
        assert c.post("/v1/token", json=erin).status_code == 429
        # carol fails five times on her device: the device is blocked, her login is not.
        for _ in range(5):
            r = c.post("/v1/token", json={**carol, "password": "wrong passphrase!"})
            assert r.status_code == 401
        assert c.post("/v1/token", json=carol).status_code == 429
    with client_from(server, "127.0.2.100") as elsewhere:
        assert elsewhere.post("/v1/token", json=carol).status_code == 200


def test_bad_input_is_a_400_with_one_log_line_and_not_a_guess(server: ServerProcess) -> None:
    deep = b'{"login": "bob", "password": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    bodies = [
        deep,
        b"[" * 5000 + b"]" * 5000,
        b'{"login": "dave", "password": "\\ud800 and more text"}',
        b'{"login": "\\udfff", "password": "a long enough passphrase"}',
        b'{"login": "dave", "password": "\xff\xfe"}',
        b'{"login": "dave", "password": "' + b"p" * 1025 + b'"}',
    ]
    with client_from(server, "127.0.3.1") as c:
        for _ in range(2):  # twelve bad requests from one address: none counts as a failure
            for body in bodies:
                r = c.post("/v1/token", content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 400, (body[:60], r.text)
                assert r.json()["error"]
                assert len(r.content) < 300
        reg = c.post(
            "/v1/register",
            content=b'{"login": "dave-unicode", "password": "twelve chars \\ud800"}',
            headers={"Content-Type": "application/json"},
        )
        assert reg.status_code in (400, 422), reg.text
        assert "unicode" in reg.json()["error"].lower()
        login, password = "dave-fine", "a long enough passphrase"
        assert (
            c.post("/v1/register", json={"login": login, "password": password}).status_code == 201
        )
        assert c.post("/v1/token", json={"login": login, "password": password}).status_code == 200
    assert server.log_path is not None
    assert "Traceback" not in server.log_path.read_text()


# --- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: mounting is the only honest way to fill a disk."""
    with small_tmpfs(tmp_path / "disk", "64m") as mount:
        yield mount


def fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until the disk is full; the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def test_a_full_disk_still_lets_the_owner_in_and_still_limits_guesses(small_disk: Path) -> None:
    server = ServerProcess(small_disk, env=SETTINGS).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as c:
            assert c.post("/v1/token", json=OWNER).status_code == 200  # a device cookie
            fill(small_disk)
            ok = c.post("/v1/token", json=OWNER)
            assert ok.status_code == 200, ok.text
            assert "set-cookie" not in ok.headers  # the new cookie could not be stored
        for i in range(5):
            with client_from(server, f"127.0.4.{i + 1}") as c:
                r = c.post("/v1/token", json=WRONG)
                assert r.status_code == 401, r.text
        with client_from(server, "127.0.4.100") as c:
            refused = c.post("/v1/token", json=OWNER)
        assert refused.status_code == 429  # counted in the process while the disk is full
        assert server.log_path is not None
        log = server.log_path.read_text()
        assert "login throttle: cannot record attempts in the database" in log
        assert "database or disk is full" in log
        assert "Traceback" not in log
    finally:
        server.stop()


def test_the_cookie_is_secure_when_a_trusted_proxy_says_the_client_used_https(
    tmp_path: Path, server: ServerProcess
) -> None:
    https = {"X-Forwarded-Proto": "https"}
    proxied = ServerProcess(
        tmp_path / "data", env={**SETTINGS, "IMAGEGATE_TRUSTED_PROXIES": "127.0.0.1"}
    ).start()
    try:
        with httpx.Client(base_url=proxied.base_url, timeout=120) as c:
            behind = c.post("/v1/token", json=OWNER, headers=https)
            assert behind.status_code == 200
            assert device_cookie(behind)["imagegate_device"]["secure"]
            plain = c.post("/v1/token", json=OWNER, headers={"X-Forwarded-Proto": "http"})
            assert not device_cookie(plain)["imagegate_device"]["secure"]
    finally:
        proxied.stop()
    # Without trusted proxies, nobody's X-Forwarded-Proto is believed.
    frank = {"login": "frank-proto", "password": "a long enough passphrase"}
    with client_from(server, "127.0.5.1") as c:
        assert c.post("/v1/register", json=frank).status_code == 201
        direct = c.post("/v1/token", json=frank, headers=https)
        assert direct.status_code == 200
        assert not device_cookie(direct)["imagegate_device"]["secure"]
