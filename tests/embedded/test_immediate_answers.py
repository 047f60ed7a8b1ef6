"""Hot public images answered by the HTTP server itself (server.py ``ImmediateAnswers``),
before a request becomes an ASGI task: the same answer the app gives (headers, bytes, request
id), the same access-log line and metrics, the same connection rules; and everything it does
not take still reaches the app.

The counter ``imagegate_immediate_answers_total`` tells which path answered: the first GET of
an image goes through the app (it fills the record and file caches), the next ones do not."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import register_and_login
from tests.embedded.test_serving_cache import noise_png, upload
from tests.embedded.test_serving_records import settled
from tests.support.images import encode, photo
from tests.support.server import ServerProcess

ACCEPTS = ("image/avif,image/webp,*/*", "image/webp,*/*", "*/*")
KEEPALIVE_REQUESTS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("immediate") / "data"
    env = {
        "IMAGEGATE_LOG_LEVEL": "info",  # the access log is on: its lines are checked
        "IMAGEGATE_HTTP_KEEPALIVE_REQUESTS": str(KEEPALIVE_REQUESTS),
    }
    server = ServerProcess(data, env=env).start()
    yield server
    server.stop()


def _counts(c: httpx.Client, route: str) -> tuple[float, float]:
    """From one scrape of /metrics: answers the server gave itself, and GET 200s counted
    under ``route`` (0 before the first)."""
    answered, requests = None, 0.0
    labels = f'{{method="GET",route="{route}",status="200"}}'
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("imagegate_immediate_answers_total "):
            answered = float(line.split()[1])
        elif line.startswith(f"imagegate_http_requests_total{labels} "):
            requests = float(line.split()[1])
    assert answered is not None, "imagegate_immediate_answers_total not at /metrics"
    return answered, requests


def answered_now(c: httpx.Client) -> float:
    return _counts(c, "")[0]


def hot(
    c: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, httpx.Response]:
    """An answer for ``url`` from the app (an If-None-Match the server does not take: a 200
    all the same) and the next one, from the server itself, both counted under the route's
    template. Tried again while the server's background work (an upload's variants) writes
    to the database, which drops the record cache between the two."""
    route = "/images/{preset}/{filename}" if url.count("/") == 3 else "/images/{filename}"
    deadline = time.monotonic() + 30
    while True:
        settled(c)
        answered, requests = _counts(c, route)
        app_answer = c.get(url, headers={**(headers or {}), "If-None-Match": '"another"'})
        server_answer = c.get(url, headers=headers)
        assert app_answer.status_code == server_answer.status_code == 200
        now_answered, now_requests = _counts(c, route)
        assert now_requests == requests + 2
        if now_answered == answered + 1:
            return app_answer, server_answer
        assert time.monotonic() < deadline, "the server never answered the image itself"
        time.sleep(0.2)


def same_answer(app: httpx.Response, server: httpx.Response) -> None:
    def comparable(r: httpx.Response) -> list[tuple[str, str]]:
        return [
            (k, v)
            for k, v in r.headers.multi_items()
            if k not in ("date", "x-request-id", "connection")
        ]

    assert comparable(server) == comparable(app)
    assert server.content == app.content


def wait_log_line(server: ServerProcess, needle: str) -> str:
    """The access log is buffered (lines at most 0.1 s late): wait for the line."""
    assert server.log_path is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.log_path.read_text().splitlines():
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needle}")


def test_the_server_answers_a_hot_image_as_the_app_does(
    c: httpx.Client, server: ServerProcess
) -> None:
    account = register_and_login(c)
    image = upload(c, account, noise_png(48, 21))
    url = image["url"]
    app_answer, server_answer = hot(c, url, {"X-Request-Id": "server-answer-1"})
    same_answer(app_answer, server_answer)
    assert server_answer.headers["x-request-id"] == "server-answer-1"
    line = wait_log_line(server, "rid=server-answer-1")
    assert f'"GET {url}" 200 {len(server_answer.content)} ' in line
    # An id of its own when the client's is missing or not sane.
    r = c.get(url, headers={"X-Request-Id": "not sane!"})
    assert r.headers["x-request-id"] != "not sane!" and len(r.headers["x-request-id"]) == 32


def test_a_hot_variant_follows_accept(c: httpx.Client) -> None:
    account = register_and_login(c)
    image = upload(c, account, encode(photo(480, 360, seed=22), "PNG"))
    url = image["variants"]["thumb"]
    types = set()
    for accept in ACCEPTS:
        app_answer, server_answer = hot(c, url, {"Accept": accept})
        same_answer(app_answer, server_answer)
        assert app_answer.headers["vary"] == "Accept"
        types.add(app_answer.headers["content-type"])
    assert types == {"image/avif", "image/webp", "image/png"}


def test_what_the_server_does_not_take_reaches_the_app(c: httpx.Client) -> None:
    account = register_and_login(c)
    public = upload(c, account, noise_png(48, 23))
    private = upload(c, account, noise_png(48, 24), "private")
    whole = hot(c, public["url"])[1].content
    etag = f'"{public["sha256"]}"'
    before = answered_now(c)
    assert c.head(public["url"]).headers["content-length"] == str(len(whole))
    assert c.get(public["url"], headers={"If-None-Match": etag}).status_code == 304
    part = c.get(public["url"], headers={"Range": "bytes=2-9"})
    assert part.status_code == 206 and part.content == whole[2:10]
    assert c.get(public["url"] + "?x=1").content == whole
    assert c.get(f"/images/{private['filename']}").status_code == 404
    assert answered_now(c) == before
    # A deletion is seen at once (the record cache), by the server as by the app.
    assert c.delete(f"/v1/images/{public['filename']}", headers=account.auth).status_code == 204
    assert c.get(public["url"]).status_code == 404
    assert answered_now(c) == before


def _exchange(sock: socket.socket, request: bytes, answers: int) -> list[bytes]:
    """Send ``request`` (one or more pipelined requests) and read ``answers`` answers' heads
    (the bodies are read and dropped by their Content-Length)."""
    sock.sendall(request)
    buffer, heads = b"", []
    while len(heads) < answers:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(heads)} answers"
            buffer += chunk
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            assert chunk
            buffer += chunk
        buffer = buffer[length:]
        heads.append(head.lower())
    return heads


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(10)
    return sock.recv(1) == b""


def test_connection_rules_hold(c: httpx.Client, server: ServerProcess) -> None:
    account = register_and_login(c)
    image = upload(c, account, noise_png(48, 25))
    url, public_sha = image["url"], image["sha256"]
    hot(c, url)
    get = f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    address = ("127.0.0.1", server.port)
    # The keep-alive limit: the last answer says Connection: close, and the server closes.
    with socket.create_connection(address) as sock:
        heads = [_exchange(sock, get, 1)[0] for _ in range(KEEPALIVE_REQUESTS)]
        assert not any(b"connection: close" in h for h in heads[:-1])
        assert b"connection: close" in heads[-1]
        assert _closed(sock)
    # A client's Connection: close, and HTTP/1.0.
    for request in (
        f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        f"GET {url} HTTP/1.0\r\n\r\n".encode(),
    ):
        with socket.create_connection(address) as sock:
            assert b"200 ok" in _exchange(sock, request, 1)[0]
            assert _closed(sock)
    # Pipelined requests are answered in order: a hot GET behind a HEAD the app answers.
    other = upload(c, account, noise_png(48, 26))
    head = f"HEAD {other['url']} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(address) as sock:
        sock.settimeout(10)
        sock.sendall(head + get)
        data = b""
        while data.count(b"\r\n\r\n") < 2:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        first, second, body = data.split(b"\r\n\r\n", 2)
        length = int(second.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk
            body += chunk
    assert f'etag: "{other["sha256"]}"'.encode() in first.lower()
    assert f'etag: "{public_sha}"'.encode() in second.lower() and len(body) == length
