"""The fast path's record cache (embedded mode): a hot image's record comes from memory, and a
change — a deletion or a visibility change in the server (seen by the very next request), an
account deleted by the CLI or a row changed by SQL in another process (seen within a second)
— is never answered from it.

Each check makes the image hot (two GETs: the second one's record from memory), makes the
change, checks the answers, and only then reads the hit counter at /metrics to show the second
GET was from memory: reading /metrics uses a database connection, which drops the cache, so it
cannot come between. If a background commit dropped the cache before the change (the second
GET was not a hit), the check runs again with a new image.

"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import Account, register_and_login
from tests.support.cli import imagegate
from tests.support.images import encode
from tests.support.server import ServerProcess

ACCEPT_AVIF = {"Accept": "image/avif,image/webp,*/*"}


def noise_png(side: int, seed: int) -> bytes:
    pixels = random.Random(seed).randbytes(side * side * 3)
    return encode(Image.frombytes("RGB", (side, side), pixels), "PNG")


def record_hits(c: httpx.Client) -> float:
    return metric_value(c, "imagegate_serve_record_cache_hits_total")


def metric_value(c: httpx.Client, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not at /metrics")


def settled(c: httpx.Client) -> None:
    """Wait until the server's background work for what was uploaded is over: the upload's
    event handled (its variants made). Until then the maker's database writes drop the record
    cache between any two requests, which on a loaded machine lasts the whole test."""
    deadline = time.monotonic() + 60
    while metric_value(c, "imagegate_outbox_depth") > 0:
        assert time.monotonic() < deadline, "the uploads' events never handled"
        time.sleep(0.05)


def hot_then(
    c: httpx.Client,
    make: Callable[[], tuple[str, dict[str, str]]],
    change: Callable[[str], None],
    check: Callable[[str], None],
) -> None:
    """``make()`` an image (its URL and request headers), GET it twice, ``change(url)`` and
    ``check(url)``; again with a new image until the second GET was from the record cache."""
    deadline = time.monotonic() + 60
    while True:
        url, headers = make()
        settled(c)
        before = record_hits(c)
        for _ in range(2):
            r = c.get(url, headers=headers)
            assert r.status_code == 200, r.text
        change(url)
        check(url)
        if record_hits(c) > before:  # (a changed image's requests are never hits)
            return
        assert time.monotonic() < deadline, "never answered from the record cache"


def eventually_gone(c: httpx.Client, url: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 10
    while not gone(c, url, headers):
        assert time.monotonic() < deadline, f"{url} still served"
        time.sleep(0.05)


def upload(c: httpx.Client, account: Account, data: bytes) -> str:
    r = c.post("/v1/upload", content=data, headers=account.auth)
    assert r.status_code == 201, r.text
    return str(r.json()["filename"])


def set_visibility(c: httpx.Client, account: Account, name: str, visibility: str) -> None:
    r = c.patch(f"/v1/images/{name}", json={"visibility": visibility}, headers=account.auth)
    assert r.status_code == 200, r.text


def gone(c: httpx.Client, url: str, headers: dict[str, str] | None = None) -> bool:
    """404 to GET, HEAD and a conditional GET (what the fast path answers from memory)."""
    headers = headers or {}
    return all(
        c.request(method, url, headers={**headers, **extra}).status_code == 404
        for method in ("GET", "HEAD")
        for extra in ({}, {"If-None-Match": "*"})
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("serving-records") / "data").start()
    yield server
    server.stop()


def test_an_image_made_private_leaves_the_public_route_at_once_and_comes_back(
    c: httpx.Client,
) -> None:
    account = register_and_login(c)

    def make() -> tuple[str, dict[str, str]]:
        return f"/images/{upload(c, account, noise_png(40, random.randrange(2**32)))}", {}

    def private(url: str) -> None:
        set_visibility(c, account, url.rsplit("/", 1)[1], "private")

    def check(url: str) -> None:
        name = url.rsplit("/", 1)[1]
        assert gone(c, url)
        assert c.get(f"/v1/user/{name}", headers=account.auth).status_code == 200
        set_visibility(c, account, name, "public")
        assert c.get(url).status_code == 200
        private(url)  # (so that the hit counter shows only the second GET of hot_then)

    hot_then(c, make, private, check)


def test_a_variant_follows_its_image_at_once(c: httpx.Client) -> None:
    account = register_and_login(c)

    def make_thumb(route: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        name = upload(c, account, noise_png(400, random.randrange(2**32)))
        settled(c)  # made in the background (asking first would make it on demand)
        url = f"{route}/thumb/{name}"
        deadline = time.monotonic() + 60
        while c.get(url, headers=headers).headers.get("content-type") != "image/avif":
            assert time.monotonic() < deadline, "the thumb was never made"
            time.sleep(0.1)
        return url, headers

    def image(url: str) -> str:
        return url.rsplit("/", 1)[1]

    hot_then(
        c,
        lambda: make_thumb("/images", ACCEPT_AVIF),
        lambda url: set_visibility(c, account, image(url), "private"),
        lambda url: assert_gone(c, url, ACCEPT_AVIF),
    )
    owner = {**ACCEPT_AVIF, **account.auth}
    hot_then(
        c,
        lambda: make_thumb("/v1/user", owner),
        lambda url: assert_deleted(c, account, image(url)),
        lambda url: assert_gone(c, url, owner),
    )


def test_a_deleted_image_is_404_at_once_on_both_routes(c: httpx.Client) -> None:
    account = register_and_login(c)
    for route, headers in (("/images", {}), ("/v1/user", account.auth)):
        hot_then(
            c,
            lambda route=route, headers=headers: (  # type: ignore[misc]
                f"{route}/{upload(c, account, noise_png(40, random.randrange(2**32)))}",
                headers,
            ),
            lambda url: assert_deleted(c, account, url.rsplit("/", 1)[1]),
            lambda url, headers=headers: assert_gone(c, url, headers),  # type: ignore[misc]
        )


def test_another_process_s_changes_are_seen_within_a_second(
    c: httpx.Client, server: ServerProcess
) -> None:
    account = register_and_login(c)

    def make() -> tuple[str, dict[str, str]]:
        return f"/images/{upload(c, account, noise_png(40, random.randrange(2**32)))}", {}

    def sql_private(url: str) -> None:
        # A write by another connection, outside the server (as an operator's SQL would be).
        with sqlite3.connect(server.data_dir / "imagegate.db") as db:
            name = url.rsplit("/", 1)[1]
            db.execute("UPDATE images SET visibility = 'private' WHERE name = ?", (name,))

    hot_then(c, make, sql_private, lambda url: eventually_gone(c, url))

    accounts: list[Account] = []

    def make_account_and_image() -> tuple[str, dict[str, str]]:
        accounts.append(register_and_login(c))
        return f"/images/{upload(c, accounts[-1], noise_png(40, random.randrange(2**32)))}", {}

    def cli_delete(url: str) -> None:
        # The CLI deletes the account in its own process: its records are gone once it returns.
        login = accounts[-1].login
        done = imagegate("user", "delete", login, "--data-dir", str(server.data_dir))
        assert done.returncode == 0, done.stderr

    hot_then(c, make_account_and_image, cli_delete, lambda url: eventually_gone(c, url))


def assert_gone(c: httpx.Client, url: str, headers: dict[str, str] | None = None) -> None:
    assert gone(c, url, headers), url


def assert_deleted(c: httpx.Client, account: Account, name: str) -> None:
    assert c.delete(f"/v1/images/{name}", headers=account.auth).status_code == 204
