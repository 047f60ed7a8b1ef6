"""The account feed on the stack (events=kafka): every security and uploader replica checks
accounts in memory, fed by imagegate.accounts; a deleted account is refused on each of them
within 1 s; while the feed lags (both relays stopped) they read the database instead, and go
back to memory when it catches up; ``GET /v1/user`` stays exact right after an upload."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import Account, register_and_login
from tests.stack.conftest import Stack
from tests.support import images

# The bound, and the setting's default (IMAGEGATE_ACCOUNT_FEED_MAX_LAG_SECONDS).
BOUND_SECONDS = 1.0
RELAYS = ("relay-1", "relay-2")


def _metric(base: str, name: str, labels: str = "") -> float:
    """One sample of a replica's /metrics (``labels`` as written, e.g. 'reason="lag"')."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    raise AssertionError(f"{wanted} not in {base}/metrics")


def _lag(base: str) -> float:
    return _metric(base, "imagegate_account_feed_lag_seconds")


def _lag_fallbacks(base: str) -> float:
    return _metric(base, "imagegate_account_feed_fallbacks_total", 'reason="lag"')


def _replicas(stack: Stack) -> list[tuple[str, str]]:
    """(base URL, path of an account-checked GET) of every security and uploader replica."""
    return [(u, "/v1/token/validation") for u in stack.service_urls("security")] + [
        (u, "/v1/images") for u in stack.service_urls("uploader")
    ]


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _wait_fresh(stack: Stack, timeout: float = 60) -> None:
    for base, _ in _replicas(stack):
        _wait(lambda b=base: _lag(b) < BOUND_SECONDS / 2, f"{base}'s feed to be fresh", timeout)


@contextmanager
def _relays_stopped(stack: Stack) -> Iterator[None]:
    for name in RELAYS:
        stack.run("stop", name)
    try:
        yield
    finally:
        for name in RELAYS:
            stack.run("start", name)


def _delete(base: str, account: Account) -> None:
    r = httpx.request(
        "DELETE",
        f"{base}/v1/user",
        headers=account.auth,
        json={"password": account.password},
        timeout=60,
    )
    assert r.status_code == 204, r.text


def _seconds_until_refused(base: str, path: str, account: Account, since: float) -> float:
    """Polls one replica as fast as it answers until it refuses the token: the seconds from
    ``since`` (time.monotonic()); then checks that it keeps refusing."""
    with httpx.Client(base_url=base, timeout=10) as c:
        while True:
            r = c.get(path, headers=account.auth)
            if r.status_code == 401:
                refused = time.monotonic() - since
                break
            assert r.status_code == 200, r.text
            assert time.monotonic() - since < 10, f"{base} still accepts a deleted account"
        assert r.json()["error"] == "account no longer exists"
        for _ in range(5):
            assert c.get(path, headers=account.auth).status_code == 401
    return refused


def test_a_deleted_account_is_refused_by_every_replica_within_a_second(stack: Stack) -> None:
    replicas = _replicas(stack)
    with stack.client() as c:
        account = register_and_login(c)
    _wait_fresh(stack)
    # Every replica knows the account from the feed and answers from memory: checks raise no
    # fallback (while the feed is fresh, the only fallbacks are for unknown accounts).
    for base, path in replicas:
        _wait(
            lambda b=base, p=path: httpx.get(b + p, headers=account.auth).status_code == 200,
            f"{base} to accept the new account",
            10,
        )
        before = _lag_fallbacks(base)
        for _ in range(20):
            assert httpx.get(base + path, headers=account.auth).status_code == 200
        assert _lag_fallbacks(base) == before, f"{base} read the database"

    _delete(stack.service_urls("security")[0], account)
    deleted_at = time.monotonic()  # the deletion had committed before its 204
    refused: dict[str, float] = {}

    def poll(base: str, path: str) -> None:
        refused[base] = _seconds_until_refused(base, path, account, deleted_at)

    threads = [threading.Thread(target=poll, args=replica) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(refused) == len(replicas), refused
    assert max(refused.values()) < BOUND_SECONDS, refused


def test_replicas_read_the_database_while_the_feed_lags(stack: Stack) -> None:
    replicas = _replicas(stack)
    with stack.client() as c:
        live, doomed = register_and_login(c), register_and_login(c)
    _wait_fresh(stack)
    with _relays_stopped(stack):
        # No heartbeats: each replica's watermark stops and soon exceeds the bound.
        for base, _ in replicas:
            _wait(lambda b=base: _lag(b) > BOUND_SECONDS, f"{base} to notice the lag", 10)
        for base, path in replicas:
            before = _lag_fallbacks(base)
            for _ in range(10):
                assert httpx.get(base + path, headers=live.auth).status_code == 200
            assert _lag_fallbacks(base) >= before + 10, f"{base} answered from memory"
        info = httpx.get(f"{stack.service_urls('security')[1]}/v1/user", headers=live.auth)
        assert info.status_code == 200 and info.json()["login"] == live.login
        # The deletion's event stays in the outbox, but the database refuses it at once.
        _delete(stack.service_urls("security")[1], doomed)
        for base, path in replicas:
            r = httpx.get(base + path, headers=doomed.auth)
            assert r.status_code == 401, (base, r.text)
    # Relays back: the feed catches up and the memory answers again.
    _wait_fresh(stack, timeout=60)
    for base, path in replicas:
        before = _lag_fallbacks(base)
        for _ in range(10):
            assert httpx.get(base + path, headers=live.auth).status_code == 200
            assert httpx.get(base + path, headers=doomed.auth).status_code == 401
        assert _lag_fallbacks(base) == before, f"{base} still reads the database"


@pytest.mark.parametrize("rounds", [6])
def test_usage_is_exact_right_after_each_upload(stack: Stack, rounds: int) -> None:
    """Read-your-writes through the gateway: no waiting for the feed, no stale usage."""
    with stack.client() as c:
        account = register_and_login(c)
        names: list[str] = []
        sizes: list[int] = []
        for i in range(rounds):
            r = c.post("/v1/upload", content=images.jpeg(40 + i, 30, seed=i), headers=account.auth)
            assert r.status_code == 201, r.text
            names.append(r.json()["filename"])
            sizes.append(int(r.json()["bytes"]))
            info = c.get("/v1/user", headers=account.auth).json()
            assert (info["images"], info["bytes"]) == (i + 1, sum(sizes))
        r = c.delete(f"/v1/images/{names[0]}", headers=account.auth)
        assert r.status_code == 204
        info = c.get("/v1/user", headers=account.auth).json()
        assert (info["images"], info["bytes"]) == (rounds - 1, sum(sizes[1:]))
