"""Behind a trusted proxy, the client address comes from X-Forwarded-For; otherwise never."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.server import ServerProcess


def test_trusted_proxy_forwarded_address_is_the_throttle_key(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", env={"IMAGEGATE_TRUSTED_PROXIES": "127.0.0.1"}
    ).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            bad = {"login": "nobody-here", "password": "bad password"}
            for _ in range(5):
                assert (
                    c.post(
                        "/v1/token", json=bad, headers={"X-Forwarded-For": "203.0.113.5"}
                    ).status_code
                    == 401
                )
            # nobody-here is blocked per login too, so use fresh logins below.
            blocked = c.post(
                "/v1/token",
                json={**bad, "login": "someone-else"},
                headers={"X-Forwarded-For": "203.0.113.5"},
            )
            assert blocked.status_code == 429
            other = c.post(
                "/v1/token",
                json={**bad, "login": "someone-else"},
                headers={"X-Forwarded-For": "203.0.113.6"},
            )
            assert other.status_code == 401
    finally:
        server.stop()
