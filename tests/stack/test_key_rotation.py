"""Signing-key rotation on the production topology, with nothing restarted: 20 clients keep
making requests through the gateway (security and uploader replicas behind it) while
``rotate`` runs on the stack's key files; no valid token gets a 401, tokens signed by the old
key keep working, new logins get tokens signed with the new kid, and every replica (and JWKS)
knows both keys."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import jwt

from imagegate.security.rotation import rotate
from imagegate.settings import Settings
from tests.conftest import Account, post_as_a_patient_client, register_and_login
from tests.stack.conftest import Stack

CLIENTS = 20
ACCOUNTS = 4
ACTIVATION = 3.0


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_rotation_under_load(stack: Stack, tmp_path: Path) -> None:
    keys = stack.state_dir / "keys"
    settings = Settings(
        data_dir=tmp_path / "admin",
        jwt_private_key_file=keys / "jwt-signing-key.pem",
        jwt_public_key_file=keys / "jwt-public.pem",
        jwt_key_activation_seconds=ACTIVATION,
    )
    with stack.client() as c:
        accounts = [register_and_login(c) for _ in range(ACCOUNTS)]
    old_kid = kid(accounts[0].token)
    tokens: list[tuple[Account, str]] = [(a, a.token) for a in accounts]  # old ones stay
    lock = threading.Lock()
    stop = threading.Event()
    statuses: Counter[tuple[str, int]] = Counter()  # (kid, status)
    failures: list[str] = []

    def client_loop(n: int) -> None:
        with stack.client(timeout=30) as c:
            i = n
            while not stop.is_set():
                with lock:
                    _, token = tokens[(i * 7) % len(tokens)]
                i += 1
                path = ("/v1/images", "/v1/user", "/v1/token/validation")[i % 3]
                r = c.get(path, headers={"Authorization": f"Bearer {token}"})
                with lock:
                    statuses[(kid(token), r.status_code)] += 1
                    if r.status_code != 200:
                        failures.append(f"{path} {kid(token)} {r.status_code} {r.text[:200]}")

    def login_loop() -> None:
        # New tokens keep coming: a login every half second (within the gateway's rate limit).
        with stack.client(timeout=30) as c:
            i = 0
            while not stop.is_set():
                account = accounts[i % ACCOUNTS]
                i += 1
                r = post_as_a_patient_client(
                    c, "/v1/token", {"login": account.login, "password": account.password}
                )
                if r.status_code == 200:
                    with lock:
                        tokens.append((account, r.text))
                else:
                    with lock:
                        failures.append(f"login {r.status_code} {r.text[:200]}")
                stop.wait(0.5)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(CLIENTS)]
    threads.append(threading.Thread(target=login_loop))
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # load before the rotation (a fixed warm-up, not a wait for an event)
        new_kid = rotate(settings)
        assert new_kid != old_kid
        deadline = time.monotonic() + 60
        while True:
            with lock:
                fresh = [t for _, t in tokens if kid(t) == new_kid]
                counted = sum(n for (k, _), n in statuses.items() if k == new_kid)
            if fresh and counted >= 200:
                break
            assert time.monotonic() < deadline, "no tokens signed with the new key in 60 s"
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    assert not failures, failures[:10]
    assert statuses[(old_kid, 200)] > 0 and statuses[(new_kid, 200)] > 0
    assert set(statuses) == {(old_kid, 200), (new_kid, 200)}, statuses

    # Old tokens still work on every replica; JWKS lists both keys.
    old_token = accounts[0].token
    for url in stack.service_urls("security"):
        with httpx.Client(base_url=url, timeout=10) as c:
            assert (
                c.get(
                    "/v1/token/validation", headers={"Authorization": f"Bearer {old_token}"}
                ).status_code
                == 200
            )
            kids = {k["kid"] for k in c.get("/.well-known/jwks.json").json()["keys"]}
            assert {old_kid, new_kid} <= kids
    for url in stack.service_urls("uploader"):
        with httpx.Client(base_url=url, timeout=10) as c:
            for token in (old_token, fresh[0]):
                r = c.get("/v1/images", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
    with stack.client() as c:
        kids = {k["kid"] for k in c.get("/.well-known/jwks.json").json()["keys"]}
        assert {old_kid, new_kid} <= kids
