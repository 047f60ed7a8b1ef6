"""Sessions on the stack (events=kafka, the account feed): a logout and a password change made
through the gateway over HTTPS are refused by both security and both uploader replicas — and
by the gateway, whose check caches a 200 — within 1 s; refresh works through the gateway, with
the cookie too."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from tests.conftest import new_login, new_password, post_as_a_patient_client
from tests.stack.conftest import Stack

BOUND_SECONDS = 1.0  # the bound
JSON = {"Accept": "application/json"}


def _checks(stack: Stack) -> list[tuple[str, str]]:
    """(base URL, path) of an account-checked GET on every replica, and through the gateway."""
    return (
        [(u, "/v1/token/validation") for u in stack.service_urls("security")]
        + [(u, "/v1/user") for u in stack.service_urls("security")]
        + [(u, "/v1/images") for u in stack.service_urls("uploader")]
        + [(stack.https, "/v1/user"), (stack.https, "/v1/images")]
    )


def _client(stack: Stack, base: str) -> httpx.Client:
    verify = stack.ssl_context() if base.startswith("https") else True
    return httpx.Client(base_url=base, verify=verify, timeout=10)


def _signed_up(gateway: httpx.Client) -> tuple[dict[str, str], dict[str, str]]:
    """A new account's credentials and a JSON login's tokens, through the gateway."""
    creds = {"login": new_login(), "password": new_password()}
    assert post_as_a_patient_client(gateway, "/v1/register", creds).status_code == 201
    deadline = time.monotonic() + 120
    while True:
        r = gateway.post("/v1/token", json=creds, headers=JSON)
        if r.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(float(r.headers.get("retry-after", "1")))
    assert r.status_code == 200, r.text
    return creds, r.json()


def _accepted_everywhere(stack: Stack, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    for base, path in _checks(stack):
        deadline = time.monotonic() + 10  # a replica's feed may not know a new account yet
        with _client(stack, base) as c:
            while (r := c.get(path, headers=auth)).status_code != 200:
                assert time.monotonic() < deadline, (base, path, r.status_code, r.text)
                time.sleep(0.05)


def _refused_within(stack: Stack, tokens: list[str], act: Callable[[], None]) -> dict[str, float]:
    """Runs ``act`` (which ends the tokens' sessions), then polls every check point as fast as
    it answers until it refuses each token: the seconds each took, from ``act``'s return."""
    _accepted_everywhere(stack, tokens[0])
    act()
    since = time.monotonic()
    refused: dict[str, float] = {}

    def poll(base: str, path: str, token: str) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        with _client(stack, base) as c:
            while True:
                r = c.get(path, headers=auth)
                if r.status_code == 401:
                    refused[f"{base}{path} {token[-8:]}"] = time.monotonic() - since
                    break
                assert r.status_code == 200, r.text
                if time.monotonic() - since > 10:
                    return  # reported below as missing
            # Refused for good once the bound has passed: before it, a check point with two
            # replicas behind it (the gateway) may still meet the one whose feed lags.
            time.sleep(max(0.0, since + BOUND_SECONDS - time.monotonic()))
            for _ in range(3):
                assert c.get(path, headers=auth).status_code == 401

    threads = [
        threading.Thread(target=poll, args=(base, path, token))
        for base, path in _checks(stack)
        for token in tokens
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(refused) == len(threads), f"still accepted after 10 s: {refused}"
    print(f"refused at {len(refused)} check points within {max(refused.values()):.3f} s")
    return refused


def test_logout_through_the_gateway_is_refused_everywhere_within_a_second(stack: Stack) -> None:
    with _client(stack, stack.https) as gateway:
        _, first = _signed_up(gateway)
        r = gateway.post(
            "/v1/token/refresh", json={"refresh_token": first["refresh_token"]}, headers=JSON
        )
        assert r.status_code == 200, r.text
        second = r.json()
        auth = {"Authorization": f"Bearer {second['access_token']}"}

        def logout() -> None:
            assert gateway.post("/v1/logout", headers=auth).status_code == 204

        refused = _refused_within(stack, [second["access_token"], first["access_token"]], logout)
        assert max(refused.values()) < BOUND_SECONDS, refused
        r = gateway.post(
            "/v1/token/refresh", json={"refresh_token": second["refresh_token"]}, headers=JSON
        )
        assert r.status_code == 401


def test_password_change_through_the_gateway_ends_other_sessions_everywhere(
    stack: Stack,
) -> None:
    with _client(stack, stack.https) as gateway:
        creds, mine = _signed_up(gateway)
        deadline = time.monotonic() + 120
        while True:
            r = gateway.post("/v1/token", json=creds, headers=JSON)
            if r.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(float(r.headers.get("retry-after", "1")))
        elsewhere = r.json()
        fresh: dict[str, str] = {}

        def change() -> None:
            r = gateway.put(
                "/v1/user/password",
                json={"current_password": creds["password"], "new_password": new_password()},
                headers={"Authorization": f"Bearer {mine['access_token']}", **JSON},
            )
            assert r.status_code == 200, r.text
            fresh.update(r.json())

        old = [mine["access_token"], elsewhere["access_token"]]
        refused = _refused_within(stack, old, change)
        assert max(refused.values()) < BOUND_SECONDS, refused
        _accepted_everywhere(stack, fresh["access_token"])
        r = gateway.post(
            "/v1/token/refresh", json={"refresh_token": fresh["refresh_token"]}, headers=JSON
        )
        assert r.status_code == 200, r.text


def test_refresh_cookie_through_the_gateway(stack: Stack) -> None:
    with _client(stack, stack.https) as gateway:
        creds, _ = _signed_up(gateway)
        csrf = {"X-Requested-With": "imagegate"}
        r = gateway.post("/v1/token?refresh=cookie", json=creds, headers={**JSON, **csrf})
        assert r.status_code == 200 and "refresh_token" not in r.json()
        line = next(
            c for c in r.headers.get_list("set-cookie") if c.startswith("imagegate_refresh=")
        )
        assert "Secure" in line and "HttpOnly" in line and "Path=/v1/token" in line
        cookie = {"Cookie": line.split(";", 1)[0]}
        r = gateway.post("/v1/token/refresh", headers={**JSON, **cookie})
        assert r.status_code == 403  # no CSRF header
        origin = f"https://{httpx.URL(stack.https).host}"
        r = gateway.post(
            "/v1/token/refresh",
            headers={**JSON, **cookie, "X-Requested-With": "fetch", "Origin": origin},
        )
        assert r.status_code == 200, r.text
        assert "refresh_token" not in r.json()
        assert any(c.startswith("imagegate_refresh=igr_") for c in r.headers.get_list("set-cookie"))


def _lag(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == "imagegate_account_feed_lag_seconds":
            return float(value)
    raise AssertionError(f"no feed lag in {base}/metrics")


def test_a_replica_that_starts_after_a_logout_still_refuses_its_tokens(stack: Stack) -> None:
    # Its feed starts from the noted end offsets: the revocation's event is behind them, so
    # only the recent revocations it loads from the database can tell it. Its memory answers
    # (fresh feed, known account) and would accept the token without them.
    uploader = stack.service_urls("uploader")[1]
    with _client(stack, stack.https) as gateway:
        _, tokens = _signed_up(gateway)
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        _accepted_everywhere(stack, tokens["access_token"])
        assert gateway.post("/v1/logout", headers=auth).status_code == 204
    stack.run("stop", "uploader-2")
    stack.run("start", "uploader-2")
    deadline = time.monotonic() + 120
    while True:
        try:
            if _lag(uploader) < BOUND_SECONDS / 2:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "uploader-2's feed did not become fresh"
        time.sleep(0.1)
    r = httpx.get(f"{uploader}/v1/images", headers=auth, timeout=10)
    assert r.status_code == 401, r.text
    assert r.json()["error"].startswith("session ended")
