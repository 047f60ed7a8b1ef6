"""The client library against a real loopback HTTP server that answers from a script: error
mapping, Retry-After, the refresh after a 401, and the upload body sent again on a retry."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagegate.client import (
    ApiError,
    AsyncClient,
    Client,
    ClientError,
    RetryPolicy,
    Tokens,
    TransportError,
    credentials,
)
from imagegate.client._core import parse_retry_after
from tests.support.server import free_port

IMAGE: dict[str, Any] = {
    "filename": "0b7c8f7e-5d7a-4a8e-9f59-3a8c2f0d1e22.jpg",
    "url": "/images/0b7c8f7e-5d7a-4a8e-9f59-3a8c2f0d1e22.jpg",
    "content_type": "image/jpeg",
    "width": 4,
    "height": 3,
    "frames": 1,
    "bytes": 99,
    "sha256": "ab" * 32,
    "visibility": "public",
    "created_at": "2026-01-01T00:00:00Z",
}


@dataclass
class Answer:
    status: int
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Scripted:
    """Answers requests in order from ``answers``; records every request in ``seen``."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[Seen] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                scripted.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                answer = scripted.answers.pop(0) if scripted.answers else Answer(500)
                data = answer.body
                raw = json.dumps(data).encode() if isinstance(data, dict) else data
                self.send_response(answer.status)
                ctype = "application/json" if isinstance(data, dict) else "text/plain"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    s = Scripted()
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


def test_an_error_carries_status_message_and_retry_after(scripted: Scripted) -> None:
    scripted.answers = [
        Answer(415, {"error": "file is not an image of an accepted type"}),
        Answer(502, b"upstream went away"),
        Answer(404, b"<html><body>nope</body></html>"),
        Answer(503, {"error": "busy"}, {"Retry-After": "3600"}),
    ]
    with Client(scripted.url, api_key="igk_x") as c:
        with pytest.raises(ApiError) as e:
            c.upload(b"not an image")
        assert (e.value.status, e.value.message) == (
            415,
            "file is not an image of an accepted type",
        )
        assert e.value.retry_after is None
        with pytest.raises(ApiError) as e:
            c.whoami()
        assert (e.value.status, e.value.message) == (502, "upstream went away")
        with pytest.raises(ApiError) as e:
            c.delete("x.jpg")
        assert (e.value.status, e.value.message) == (404, "Not Found")  # not the HTML
        # A wait longer than the policy allows is not waited for: raised with the wait.
        with pytest.raises(ApiError) as e:
            c.images()
        assert (e.value.status, e.value.retry_after) == (503, 3600.0)
    assert len(scripted.seen) == 4
    assert scripted.seen[0].headers["authorization"] == "Bearer igk_x"


def test_busy_answers_are_retried_after_their_retry_after(scripted: Scripted) -> None:
    scripted.answers = [
        Answer(503, {"error": "at capacity"}, {"Retry-After": "2"}),
        Answer(429, {"error": "slow down"}, {"Retry-After": "1"}),
        Answer(201, IMAGE, {"Location": IMAGE["url"]}),
    ]
    waits: list[float] = []
    with Client(scripted.url, api_key="k", sleep=waits.append) as c:
        up = c.upload(b"\xff\xd8 some bytes")
    assert waits == [2.0, 1.0]
    assert up.created and up.image.filename == IMAGE["filename"]
    assert [s.body for s in scripted.seen] == [b"\xff\xd8 some bytes"] * 3


def test_retries_are_bounded(scripted: Scripted) -> None:
    scripted.answers = [Answer(503, {"error": "busy"}, {"Retry-After": "0"}) for _ in range(10)]
    waits: list[float] = []
    policy = RetryPolicy(max_retries=3)
    client = Client(scripted.url, api_key="k", retry=policy, sleep=waits.append)
    with client as c, pytest.raises(ApiError) as e:
        c.whoami()
    assert e.value.status == 503
    assert len(scripted.seen) == 4 and waits == [0.0, 0.0, 0.0]


def test_a_retry_without_retry_after_backs_off(scripted: Scripted) -> None:
    scripted.answers = [Answer(503, {"error": "busy"}), Answer(503, {"error": "busy"})]
    scripted.answers.append(Answer(200, {"items": [IMAGE], "next_cursor": None}))
    waits: list[float] = []
    with Client(scripted.url, api_key="k", sleep=waits.append) as c:
        page = c.images(limit=5)
    assert waits == [1.0, 2.0]
    assert [i.filename for i in page.items] == [IMAGE["filename"]]
    assert scripted.seen[-1].path == "/v1/images?limit=5"


def test_an_upload_retried_sends_the_whole_file_again(scripted: Scripted, tmp_path: Path) -> None:
    data = os.urandom(700_000)  # several chunks
    (tmp_path / "a.jpg").write_bytes(data)
    scripted.answers = [Answer(503, {"error": "busy"}, {"Retry-After": "0"}), Answer(200, IMAGE)]
    sent: list[int] = []
    with Client(scripted.url, api_key="k", sleep=lambda s: None) as c:
        up = c.upload(tmp_path / "a.jpg", visibility="private", progress=sent.append)
    assert not up.created  # 200: the server had these bytes already
    assert [s.body for s in scripted.seen] == [data, data]
    assert all(s.headers["content-length"] == str(len(data)) for s in scripted.seen)
    assert scripted.seen[0].path == "/v1/upload?visibility=private"
    assert sent[-1] == len(data) and sent.count(len(data)) == 2  # progress restarted


def test_a_401_is_retried_once_after_a_refresh(scripted: Scripted) -> None:
    user = {"id": "1", "login": "alice", "created_at": "x", "images": 2, "bytes": 10}
    scripted.answers = [
        Answer(401, {"error": "token expired"}),
        Answer(200, {"access_token": "A2", "refresh_token": "R2", "expires_in": 900}),
        Answer(200, user),
    ]
    kept: list[Tokens] = []
    with Client(scripted.url, tokens=Tokens("A1", "R1"), on_tokens=kept.append) as c:
        me = c.whoami()
    assert me.login == "alice" and me.images == 2
    assert [(s.method, s.path) for s in scripted.seen] == [
        ("GET", "/v1/user"),
        ("POST", "/v1/token/refresh"),
        ("GET", "/v1/user"),
    ]
    assert scripted.seen[0].headers["authorization"] == "Bearer A1"
    assert json.loads(scripted.seen[1].body) == {"refresh_token": "R1"}
    assert "authorization" not in scripted.seen[1].headers
    assert scripted.seen[2].headers["authorization"] == "Bearer A2"
    assert [(t.access_token, t.refresh_token) for t in kept] == [("A2", "R2")]


def test_a_second_401_is_raised_and_a_refused_refresh_too(scripted: Scripted) -> None:
    scripted.answers = [
        Answer(401, {"error": "token expired"}),
        Answer(200, {"access_token": "A2", "refresh_token": "R2"}),
        Answer(401, {"error": "session ended"}),
        Answer(401, {"error": "refresh token revoked"}),
    ]
    with Client(scripted.url, tokens=Tokens("A1", "R1")) as c:
        with pytest.raises(ApiError) as e:
            c.whoami()
        assert (e.value.status, e.value.message) == (401, "session ended")
        with pytest.raises(ApiError) as e:  # A2 refused at once: its refresh is refused
            c.refresh()
        assert e.value.message == "refresh token revoked"
    assert len(scripted.seen) == 4


def test_an_access_token_about_to_expire_is_renewed_first(scripted: Scripted) -> None:
    scripted.answers = [
        Answer(200, {"access_token": "A2", "refresh_token": "R2", "expires_in": 900}),
        Answer(204),
    ]
    with Client(scripted.url, tokens=Tokens("A1", "R1", expires_at=1.0)) as c:
        c.delete(IMAGE["filename"])
    assert [s.path for s in scripted.seen] == [
        "/v1/token/refresh",
        f"/v1/images/{IMAGE['filename']}",
    ]
    assert scripted.seen[1].headers["authorization"] == "Bearer A2"


def test_login_asks_for_json_and_keeps_the_refresh_token(scripted: Scripted) -> None:
    scripted.answers = [
        Answer(200, {"access_token": "A", "token_type": "bearer", "expires_in": 900}),
        Answer(429, {"error": "too many failed logins"}, {"Retry-After": "30"}),
    ]
    with Client(scripted.url) as c:
        tokens = c.login("alice", "pw")
        assert tokens.access_token == "A" and tokens.refresh_token is None
        assert tokens.expires_at is not None
        with pytest.raises(ApiError) as e:  # a throttled login is not retried by the client
            c.login("alice", "wrong")
        assert (e.value.status, e.value.retry_after) == (429, 30.0)
    assert scripted.seen[0].headers["accept"] == "application/json"
    assert json.loads(scripted.seen[0].body) == {"login": "alice", "password": "pw"}
    assert len(scripted.seen) == 2


def test_keys_and_listing_pages(scripted: Scripted) -> None:
    key = {
        "id": "k1",
        "name": "ci",
        "prefix": "igk_ab",
        "scopes": ["images:read"],
        "created_at": "t",
        "expires_at": "u",
        "last_used_at": None,
    }
    scripted.answers = [
        Answer(201, {**key, "key": "igk_secret"}),
        Answer(200, {"items": [key]}),
        Answer(204),
        Answer(200, {"items": [IMAGE], "next_cursor": "c2"}),
        Answer(200, {"items": [IMAGE], "next_cursor": None}),
    ]
    with Client(scripted.url, tokens=Tokens("A")) as c:
        made = c.create_key("ci", ["images:read"], expires_in_days=7)
        assert made.key == "igk_secret" and made.scopes == ("images:read",)
        listed = c.list_keys()
        assert [(k.id, k.prefix, k.key) for k in listed] == [("k1", "igk_ab", None)]
        c.revoke_key("k1")
        assert len(list(c.iter_images(page_size=1))) == 2
        with pytest.raises(ClientError):
            c.revoke_key("../v1/user")
    assert json.loads(scripted.seen[0].body) == {
        "name": "ci",
        "scopes": ["images:read"],
        "expires_in_days": 7,
    }
    assert scripted.seen[2].method == "DELETE" and scripted.seen[2].path == "/v1/keys/k1"
    assert scripted.seen[4].path == "/v1/images?limit=1&cursor=c2"


def test_no_server_is_a_transport_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", api_key="k") as c, pytest.raises(TransportError):
        c.whoami()


def test_the_async_client_behaves_the_same(scripted: Scripted) -> None:
    scripted.answers = [
        Answer(503, {"error": "busy"}, {"Retry-After": "1"}),
        Answer(201, IMAGE),
        Answer(401, {"error": "expired"}),
        Answer(200, {"access_token": "A2", "refresh_token": "R2"}),
        Answer(200, {"items": [], "next_cursor": None}),
        Answer(422, {"error": "cursor: not a cursor from this listing"}),
    ]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def go() -> None:
        async with AsyncClient(scripted.url, tokens=Tokens("A1", "R1"), sleep=sleep) as c:
            up = await c.upload(b"bytes")
            assert up.created
            assert (await c.images()).items == []
            with pytest.raises(ApiError) as e:
                await c.images(cursor="nope")
            assert (e.value.status, e.value.message) == (
                422,
                "cursor: not a cursor from this listing",
            )
            assert c.tokens == Tokens("A2", "R2", None)

    asyncio.run(go())
    assert waits == [1.0]
    assert [s.headers.get("authorization") for s in scripted.seen] == [
        "Bearer A1",
        "Bearer A1",
        "Bearer A1",
        None,
        "Bearer A2",
        "Bearer A2",
    ]
    assert scripted.seen[1].body == b"bytes"


def test_retry_after_as_seconds_or_a_date() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    assert parse_retry_after(None) is None


def test_the_credentials_file_is_private_from_its_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    old = os.umask(0)  # the most permissive umask: the file must still be 0600
    try:
        path = credentials.save({"url": "http://x", "refresh_token": "r"})
        credentials.save({"url": "http://x", "refresh_token": "r2"})  # replaced, still 0600
    finally:
        os.umask(old)
    assert path == tmp_path / "cfg" / "imagegate" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert credentials.load() == {"url": "http://x", "refresh_token": "r2"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["credentials.json"]
    with credentials.locked():
        assert stat.S_IMODE((path.parent / "credentials.lock").stat().st_mode) == 0o600
    assert credentials.delete() and not credentials.delete()
    assert credentials.load() is None
