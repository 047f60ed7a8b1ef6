"""Security properties of the deployed topology."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
import uuid

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


def test_deleted_accounts_token_stops_working_within_the_cache_time(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        assert c.get("/v1/images", headers=account.auth).status_code == 200  # cached as valid
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
        start = time.monotonic()
        while c.get("/v1/images", headers=account.auth).status_code != 401:
            assert time.monotonic() - start < 30, "still accepted after the 30 s cache time"
            time.sleep(0.5)
        for path in ("/v1/user", "/v1/images"):
            assert c.get(path, headers=account.auth).status_code == 401


def test_request_id_reaches_the_service_logs(stack: Stack) -> None:
    rid = f"trace-{uuid.uuid4().hex}"
    with stack.client() as c:
        account = register_and_login(c)
        r = c.get("/v1/user", headers={**account.auth, "X-Request-Id": rid})
    assert r.headers["X-Request-Id"] == rid
    logs = stack.state_dir / "logs"
    time.sleep(0.5)
    gateway = (logs / "access.log").read_text()
    services = "".join(p.read_text() for p in logs.glob("security-*.log"))
    assert f"rid={rid}" in gateway
    assert f"rid={rid}" in services


def test_gateway_rate_limits_login_with_a_json_429(stack: Stack) -> None:
    address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.77"
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=stack.http, transport=transport, timeout=30) as c:
        statuses = []
        for _ in range(120):  # far over the 20/s rate and its burst of 40
            r = c.post("/v1/token", content=b"{}", headers={"Content-Type": "application/json"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]
                assert r.headers["Retry-After"]
                break
    assert statuses[0] == 400  # the service's answer while under the limit
    assert statuses[-1] == 429
