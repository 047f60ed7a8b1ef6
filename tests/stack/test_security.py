"""Security properties of the deployed topology."""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import register_and_login
from tests.contract.test_tokens import SEED_HS256_TOKEN
from tests.stack.conftest import Stack
from tests.support import images


def test_private_objects_are_not_readable_anonymously_at_minio(stack: Stack) -> None:
    with stack.client() as c:
        owner = register_and_login(c)
        private = c.post(
            "/v1/upload",
            content=images.jpeg(64, 64),
            headers=owner.auth,
            params={"visibility": "private"},
        ).json()
        public = c.post(
            "/v1/upload", content=images.jpeg(64, 64, seed=3), headers=owner.auth
        ).json()
    minio, bucket = stack.urls["minio"], stack.urls["bucket"]
    assert httpx.get(f"{minio}/{bucket}/private/{private['filename']}").status_code == 403
    assert httpx.get(f"{minio}/{bucket}/public/{private['filename']}").status_code in (403, 404)
    assert httpx.get(f"{minio}/{bucket}/public/{public['filename']}").status_code == 200
    assert httpx.get(f"{minio}/{bucket}?list-type=2").status_code == 403  # no listing


def test_client_sent_identity_headers_have_no_effect(stack: Stack) -> None:
    with stack.client() as c:
        alice, mallory = register_and_login(c), register_and_login(c)
        secret = c.post(
            "/v1/upload",
            content=images.jpeg(64, 64),
            headers=alice.auth,
            params={"visibility": "private"},
        ).json()["filename"]
        spoof = {"X-User-Id": alice.id, "X-User-Login": alice.login}
        assert c.get("/v1/user", headers={**mallory.auth, **spoof}).json()["id"] == mallory.id
        assert c.get(f"/v1/user/{secret}", headers={**mallory.auth, **spoof}).status_code == 404
        assert c.get(f"/v1/user/{secret}", headers=spoof).status_code == 401
        assert c.get("/v1/images", headers={**mallory.auth, **spoof}).json()["items"] == []


def test_seed_hs256_token_is_rejected_at_the_gateway(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {SEED_HS256_TOKEN}"}
    with stack.client() as c:
        for method, path in (("GET", "/v1/user"), ("POST", "/v1/upload"), ("GET", "/v1/images")):
            r = c.request(method, path, headers=auth, content=b"x" if method == "POST" else None)
            assert r.status_code == 401
            assert r.json()["error"]
            assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_forged_token_borrowing_a_cached_signature_is_refused(stack: Stack) -> None:
    """The gateway's verdict cache is keyed by the token's signature alone; the services check
    the whole token, so a forged payload under a cached signature still gets a 401."""
    with stack.client() as c:
        victim, attacker = register_and_login(c), register_and_login(c)
        token = victim.auth["Authorization"].removeprefix("Bearer ")
        header, payload, signature = token.split(".")
        assert c.get("/v1/images", headers=victim.auth).status_code == 200  # now cached
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims.update(sub=attacker.id, login=attacker.login)
        forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        forged = {"Authorization": f"Bearer {header}.{forged_payload.decode()}.{signature}"}
        for method, path in (("GET", "/v1/user"), ("GET", "/v1/images"), ("POST", "/v1/upload")):
            content = images.jpeg(32, 32) if method == "POST" else None
            r = c.request(method, path, headers=forged, content=content)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]
        assert c.get("/v1/images", headers=victim.auth).status_code == 200


def test_deleted_accounts_token_stops_working_at_once(stack: Stack) -> None:
    """The README: the gateway caches a 200 verdict for 30 s, but the services check the account
    on every request, so a deleted account is refused everywhere within a second."""
    with stack.client() as c:
        account = register_and_login(c)
        # Cache the valid verdict at the gateway, on every route family the token opens.
        for path in ("/v1/images", "/v1/user"):
            for _ in range(4):  # both replicas of each service
                assert c.get(path, headers=account.auth).status_code == 200
        deleted = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegate",
                "user",
                "delete",
                account.login,
                "--data-dir",
                str(stack.state_dir / "admin"),
            ],
            env={**os.environ, **stack.env("uploader")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert deleted.returncode == 0, deleted.stderr

        def refused_everywhere() -> bool:
            for _ in range(4):  # both replicas of each service
                for method, path in (
                    ("GET", "/v1/images"),
                    ("GET", "/v1/user"),
                    ("POST", "/v1/upload"),
                ):
                    content = images.jpeg(16, 16) if method == "POST" else None
                    r = c.request(method, path, headers=account.auth, content=content)
                    if r.status_code != 401:
                        assert r.status_code in (200, 201), (method, path, r.text)
                        return False
                    assert r.json()["error"]
            return True

        # Each replica learns of the deletion from its account feed (events on Kafka): within
        # IMAGEGATE_ACCOUNT_FEED_MAX_LAG_SECONDS (1 s), usually tens of milliseconds (timed per
        # replica in test_account_feed.py); from then on every request is a 401.
        deadline = time.monotonic() + 1.0
        while not refused_everywhere():
            assert time.monotonic() < deadline, "a replica accepts a deleted account after 1 s"
        assert refused_everywhere()


def _wait_for_line(path: Path, needle: str, timeout: float = 10) -> None:
    """Log lines are written after the response has gone out: wait for the line itself."""
    deadline = time.monotonic() + timeout
    while needle not in path.read_text():
        assert time.monotonic() < deadline, f"{needle} not in {path.name} after {timeout} s"
        time.sleep(0.05)


def test_request_id_reaches_the_service_logs(stack: Stack) -> None:
    rid = f"trace-{uuid.uuid4().hex}"
    with stack.client() as c:
        account = register_and_login(c)
        r = c.get("/v1/user", headers={**account.auth, "X-Request-Id": rid})
    assert r.headers["X-Request-Id"] == rid
    logs = stack.state_dir / "logs"
    _wait_for_line(logs / "access.log", f"rid={rid}")
    deadline = time.monotonic() + 10
    while not any(f"rid={rid}" in p.read_text() for p in logs.glob("security-*.log")):
        assert time.monotonic() < deadline, "the request id is in no security log"
        time.sleep(0.05)


# deploy/local/stack.py: 20 r/s with a burst of 40 per client address, unless overridden.
LOGIN_BURST = int(os.environ.get("IMAGEGATE_STACK_LOGIN_BURST", "40"))


def test_gateway_rate_limits_login_with_a_json_429(stack: Stack) -> None:
    """Over the burst at once: every request is written before any answer is read, so the
    test does not depend on how fast this machine sends requests one after another."""
    address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.77"
    host, port = stack.http.removeprefix("http://").split(":")
    request = (
        f"POST /v1/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    ).encode()
    count = 3 * LOGIN_BURST
    sockets = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, int(port)), timeout=30, source_address=(address, 0))
            sockets.append(s)
        for s in sockets:
            s.sendall(request)
        replies = [_read_reply(s) for s in sockets]
    finally:
        for s in sockets:
            s.close()
    statuses = [status for status, _, _ in replies]
    # The burst passes through to the service (400: an empty login), the rest is refused;
    # whatever the rate refilled while the requests went out passes too, so only bounds.
    assert statuses.count(400) >= LOGIN_BURST, statuses
    assert statuses.count(429) >= count - 2 * LOGIN_BURST, statuses
    assert set(statuses) == {400, 429}, statuses
    for status, headers, body in replies:
        if status == 429:
            assert json.loads(body)["error"]
            assert int(headers["retry-after"]) > 0


def _read_reply(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 reply on a ``Connection: close`` socket: status, headers, body."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body
