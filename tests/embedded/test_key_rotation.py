"""Signing-key rotation against a real ``imagegate serve`` (embedded: the key in its data dir),
without a restart: clients keep making requests while ``rotate`` runs; none of their valid
tokens gets a 401, the old tokens keep working, new logins are signed with the new kid once it
starts (not before), and JWKS lists both keys from the rotation on."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from imagegate.security.rotation import describe, rotate
from imagegate.settings import Settings
from tests.conftest import register_and_login
from tests.support.rawhttp import wait_for
from tests.support.server import ServerProcess

ACTIVATION = 3.0
CLIENTS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("rotation") / "data", env={"IMAGEGATE_CODEC_WORKERS": "1"}
    ).start()
    yield srv
    srv.stop()


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def jwks_kids(c: httpx.Client) -> set[str]:
    return {k["kid"] for k in c.get("/.well-known/jwks.json").json()["keys"]}


def test_rotation_without_restart(server: ServerProcess) -> None:
    settings = Settings(data_dir=server.data_dir, jwt_key_activation_seconds=ACTIVATION)
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        account = register_and_login(c)
        old_kid = kid(account.token)
        assert jwks_kids(c) == {old_kid}
    creds = {"login": account.login, "password": account.password}
    tokens = [account.token]
    lock = threading.Lock()
    stop = threading.Event()
    statuses: Counter[tuple[str, int]] = Counter()

    def client_loop(n: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            i = n
            while not stop.is_set():
                with lock:
                    token = tokens[i % len(tokens)]
                i += 1
                path = ("/v1/images", "/v1/user", "/v1/token/validation")[i % 3]
                r = c.get(path, headers={"Authorization": f"Bearer {token}"})
                with lock:
                    statuses[(kid(token), r.status_code)] += 1

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            wait_for("requests before the rotation", lambda: sum(statuses.values()) > 50)
            rotated_at = time.time()
            new_kid = rotate(settings)
            assert {p["state"] for p in describe(settings)} == {"next", "signing"}
            wait_for("JWKS to list the new key", lambda: new_kid in jwks_kids(c), timeout=10)
            # Logins sign with the old key until the new one starts, then with the new one.
            while True:
                r = c.post("/v1/token", json=creds)
                assert r.status_code == 200, r.text
                with lock:
                    tokens.append(r.text)
                if kid(r.text) == new_kid:
                    assert time.time() >= rotated_at + ACTIVATION  # never early
                    break
                assert kid(r.text) == old_kid
                assert time.time() < rotated_at + 30, "never signed with the new key"
                time.sleep(0.3)
            start = sum(n for (k, _), n in statuses.items() if k == new_kid)
            wait_for(
                "requests with the new tokens",
                lambda: sum(n for (k, _), n in statuses.items() if k == new_kid) > start + 50,
            )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert set(statuses) == {(old_kid, 200), (new_kid, 200)}, statuses
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        auth = {"Authorization": f"Bearer {account.token}"}
        assert c.get("/v1/images", headers=auth).status_code == 200  # the old token
        assert jwks_kids(c) == {old_kid, new_kid}
    assert (server.data_dir / "jwt-signing-key.pem").stat().st_mode & 0o777 == 0o600


def test_a_broken_key_file_keeps_the_keys_in_use(server: ServerProcess, tmp_path: Path) -> None:
    """A key file replaced by garbage is reported and ignored: tokens keep working."""
    path = server.data_dir / "jwt-signing-key.pem"
    good = path.read_bytes()
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        account = register_and_login(c)
        try:
            broken = tmp_path / "broken.pem"
            broken.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
            broken.chmod(0o600)
            broken.replace(path)
            log = server.log_path or Path()

            def login_still_works() -> bool:
                # Each login looks at the file (at most once a second) and must still sign.
                creds = {"login": account.login, "password": account.password}
                r = c.post("/v1/token", json=creds)
                assert r.status_code == 200, r.text
                auth = {"Authorization": f"Bearer {r.text}"}
                assert c.get("/v1/images", headers=auth).status_code == 200
                return "signing keys not reloaded" in log.read_text()

            wait_for("the broken file to be reported", login_still_works, timeout=20, interval=0.2)
        finally:
            path.write_bytes(good)
