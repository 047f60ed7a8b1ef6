"""Same upload twice across replicas: identical uploads of one account sent at once through the
gateway land on both uploader replicas, each of which finds no earlier image and does the work;
the unique (owner, upload digest) index lets one record commit, and the other replica answers
that image (200) and removes the object it stored. One image, one object, whatever the timing."""

from __future__ import annotations

import threading
import time

import httpx

from tests.conftest import register_and_login
from tests.stack.conftest import Stack
from tests.support import images

CONCURRENT = 4  # under one replica's per-account places (1 worker + 4 waiting), a 503 is retried


def test_identical_uploads_on_both_replicas_end_with_one_image(stack: Stack) -> None:
    # A few seconds of codec work (PNG re-encoding): the replicas' jobs overlap.
    data = images.encode(images.photo(1600, 1200, seed=131), "PNG", compress_level=1)
    with stack.client() as c:
        account = register_and_login(c)
    keys_before = stack.object_keys()
    start = threading.Barrier(CONCURRENT)
    answers: list[httpx.Response] = []

    def send() -> None:
        start.wait(30)
        with stack.client(timeout=180) as c:
            deadline = time.monotonic() + 120
            while True:
                r = c.post("/v1/upload", content=data, headers=account.auth)
                if r.status_code != 503 or time.monotonic() > deadline:
                    answers.append(r)
                    return
                time.sleep(float(r.headers.get("retry-after", "1")))

    threads = [threading.Thread(target=send) for _ in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert len(answers) == CONCURRENT
    assert sorted(r.status_code for r in answers) == [200] * (CONCURRENT - 1) + [201], [
        r.text for r in answers
    ]
    (name,) = {r.json()["filename"] for r in answers}
    with stack.client() as c:
        listed = c.get("/v1/images", headers=account.auth).json()["items"]
        info = c.get("/v1/user", headers=account.auth).json()
    assert [i["filename"] for i in listed] == [name]
    assert info["images"] == 1
    # The losing replica's copy is gone: the bucket holds this upload once.
    deadline = time.monotonic() + 30
    while stack.object_keys() - keys_before != {f"public/{name}"}:
        assert time.monotonic() < deadline, stack.object_keys() - keys_before
        time.sleep(0.2)
