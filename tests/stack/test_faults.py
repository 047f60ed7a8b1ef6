"""Faults in the deployed topology: replicas dying, storage and database outages, restarts."""

from __future__ import annotations

import hashlib
import threading
import time

import httpx

from tests.conftest import Account, register_and_login
from tests.stack.conftest import Stack
from tests.support import images


def _upload(
    c: httpx.Client, account: Account, seed: int, visibility: str = "public"
) -> dict[str, str]:
    r = c.post(
        "/v1/upload",
        content=images.jpeg(320, 240, seed=seed),
        headers=account.auth,
        params={"visibility": visibility},
    )
    assert r.status_code == 201, r.text
    body: dict[str, str] = r.json()
    return body


def test_killing_a_replica_of_each_service_fails_no_idempotent_request(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        public = _upload(c, account, 1)
        private = _upload(c, account, 2, "private")
    requests = [
        ("/v1/user", account.auth),
        (f"/v1/user/{private['filename']}", account.auth),
        ("/v1/images", account.auth),
        (f"/images/{public['filename']}", {}),
        ("/status", {}),
    ]
    stop = threading.Event()
    outcomes: list[tuple[str, int]] = []

    def load() -> None:
        with stack.client() as c:
            while not stop.is_set():
                for path, headers in requests:
                    try:
                        outcomes.append((path, c.get(path, headers=headers).status_code))
                    except httpx.HTTPError as exc:
                        outcomes.append((path, -1))
                        print(exc)

    def wait_for(count: int, what: str) -> None:
        # Progress is counted in requests, not seconds: a slow machine just takes longer.
        deadline = time.monotonic() + 180
        while len(outcomes) < count:
            assert time.monotonic() < deadline, f"only {len(outcomes)} requests {what}"
            assert any(t.is_alive() for t in threads), "the load threads died"
            time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(40, "before the kill")
        stack.run("kill", "security-1")
        stack.run("kill", "uploader-1")
        killed_at = len(outcomes)
        # Enough requests that round-robin sends many of them to each dead replica first.
        wait_for(killed_at + 300, "after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        stack.run("start", "security-1")
        stack.run("start", "uploader-1")
    failed = [o for o in outcomes if o[1] != 200]
    assert len(outcomes) - killed_at >= 300
    assert failed == []


def test_storage_outage_gives_503_and_leaves_no_record(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        stack.run("stop", "minio")
        try:
            r = c.post("/v1/upload", content=images.jpeg(64, 64), headers=account.auth)
            assert r.status_code == 503
            assert "storage" in r.json()["error"]
            assert int(r.headers["Retry-After"]) > 0
            assert c.get("/healthz").status_code == 503
            info = c.get("/v1/user", headers=account.auth).json()
            assert (info["images"], info["bytes"]) == (0, 0)
        finally:
            stack.run("start", "minio")
        stack.wait_healthy()
        assert _upload(c, account, 3)["filename"]


def test_database_outage_gives_503_and_recovers(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        stack.run("stop", "postgres")
        try:
            login = c.post("/v1/token", json={"login": account.login, "password": account.password})
            me = c.get("/v1/user", headers=account.auth)
            up = c.post("/v1/upload", content=images.jpeg(64, 64), headers=account.auth)
            for r in (login, me, up):
                assert r.status_code == 503, (r.request.url, r.text)
                assert r.json()["error"]
        finally:
            stack.run("start", "postgres")
        deadline = time.monotonic() + 30
        while c.get("/v1/user", headers=account.auth).status_code != 200:
            assert time.monotonic() < deadline, "did not recover within 30 s"
            time.sleep(0.5)
        assert (
            c.post(
                "/v1/token", json={"login": account.login, "password": account.password}
            ).status_code
            == 200
        )
        assert c.get("/v1/user", headers=account.auth).json()["images"] == 0
        assert _upload(c, account, 4)["filename"]


def test_whole_stack_restart_keeps_every_image(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        stored = [_upload(c, account, 10 + i, "private" if i % 2 else "public") for i in range(6)]
    stack.run("down")
    stack.run("up", None, "--demo")
    stack.wait_healthy()
    with stack.client() as c:
        for body in stored:
            owned = c.get(f"/v1/user/{body['filename']}", headers=account.auth)
            assert owned.status_code == 200
            assert hashlib.sha256(owned.content).hexdigest() == body["sha256"]
            if body["visibility"] == "public":
                public = c.get(f"/images/{body['filename']}")
                assert hashlib.sha256(public.content).hexdigest() == body["sha256"]
