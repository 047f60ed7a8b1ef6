"""50 concurrent uploads from 5 users: all stored, all intact, privacy kept."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Account, Target, register_and_login
from tests.support import images


@pytest.mark.slow
def test_fifty_concurrent_uploads_from_five_users(target: Target) -> None:
    with target.client() as c:
        users = [register_and_login(c) for _ in range(5)]
    jobs = [(users[i % 5], i) for i in range(50)]

    def send(job: tuple[Account, int]) -> tuple[Account, dict[str, str]]:
        user, i = job
        visibility = "private" if i % 2 else "public"
        data = images.jpeg(640, 480, seed=i)
        deadline = time.monotonic() + 120
        with target.client() as c:
            while True:
                r = c.post(
                    "/v1/upload", content=data, headers=user.auth, params={"visibility": visibility}
                )
                # Ten at once is over one account's share of places: retry as told.
                if r.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(float(r.headers["Retry-After"]))
        assert r.status_code == 201, r.text
        return user, r.json()

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(send, jobs))

    assert len({body["filename"] for _, body in results}) == 50
    with target.client() as c:
        for owner, body in results:
            got = c.get(f"/v1/user/{body['filename']}", headers=owner.auth)
            assert got.status_code == 200
            assert hashlib.sha256(got.content).hexdigest() == body["sha256"]
            for other in users:
                if other is owner:
                    continue
                seen = c.get(f"/v1/user/{body['filename']}", headers=other.auth)
                assert seen.status_code == 404
            public = c.get(f"/images/{body['filename']}")
            assert public.status_code == (200 if body["visibility"] == "public" else 404)
        for user in users:
            listed = c.get("/v1/images", headers=user.auth, params={"limit": 200}).json()["items"]
            mine = {b["filename"] for o, b in results if o is user}
            assert {i["filename"] for i in listed} == mine
            # The usage counters are updated by concurrent transactions: none may be lost.
            info = c.get("/v1/user", headers=user.auth).json()
            assert info["images"] == len(mine)
            assert info["bytes"] == sum(int(b["bytes"]) for o, b in results if o is user)
