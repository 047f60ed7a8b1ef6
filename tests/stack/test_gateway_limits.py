"""Header floods and slow clients at the gateway: NGINX refuses oversized header blocks in the
services' JSON error shape (431) and keeps serving everyone else; slow headers and stalled bodies
are cut off at its timeouts, leaving nothing behind."""

from __future__ import annotations

import contextlib
import socket
import time

import httpx
import pytest

from tests.conftest import register_and_login
from tests.stack.conftest import Stack
from tests.support.rawhttp import connect, read_response


def _refused(stack: Stack, head: bytes) -> None:
    """Send a request head; it must be answered 431 with a JSON ``{"error"}`` body."""
    with connect(stack.http) as sock:
        # Refused before we finished sending: the answer is still there to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        answer = read_response(sock, timeout=30)
    assert answer.status == 431, answer
    assert answer.headers["content-type"] == "application/json"
    assert "too large" in answer.json()["error"]


@pytest.mark.parametrize("size", [9 * 1024, 64 * 1024, 4 * 1024 * 1024])
def test_an_oversized_header_is_431_json(stack: Stack, size: int) -> None:
    line = b"X-Big: " + b"a" * size + b"\r\n"
    _refused(stack, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + line + b"\r\n")


def test_ten_thousand_headers_are_431_json(stack: Stack) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    _refused(stack, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n")


def test_the_gateway_keeps_serving_during_a_header_flood(stack: Stack) -> None:
    big = b"GET /v1/user HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    socks: list[socket.socket] = []
    try:
        for _ in range(50):  # bounded: 50 connections, 2 MB in all
            sock = connect(stack.http)
            socks.append(sock)
            sock.sendall(big)
        with httpx.Client(base_url=stack.http, timeout=30) as c:
            assert c.get("/status").json() == {"status": "OK"}
        for sock in socks:
            assert read_response(sock, timeout=30).status == 431
    finally:
        for sock in socks:
            sock.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` within ``seconds`` (anything it sends first is read)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_slow_headers_and_stalled_bodies_are_cut_off(stack: Stack) -> None:
    """Slowloris at the gateway: a header block that never ends and an upload body that stops
    are both cut off at NGINX's 60 s timeouts, and the uploader keeps no temp file."""
    with stack.client() as c:
        token = register_and_login(c).token
    tmp_dirs = [stack.state_dir / name / "tmp" for name in ("uploader-1", "uploader-2")]
    slow_header = connect(stack.http)
    stalled_body = connect(stack.http)
    try:
        slow_header.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        stalled_body.sendall(
            b"POST /v1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: 1000000\r\n\r\n".encode()
            + b"\xff\xd8\xff"
            + b"\0" * 100_000
        )
        # 60 s timeouts (client_header_timeout, client_body_timeout), plus a margin.
        assert _closed_within(slow_header, 75), "a header block that never ends was kept open"
        assert _closed_within(stalled_body, 15), "a stalled upload body was kept open"
    finally:
        slow_header.close()
        stalled_body.close()
    deadline = time.monotonic() + 30
    while any(any(d.iterdir()) for d in tmp_dirs if d.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for d in tmp_dirs if d.exists() for p in d.iterdir()]


def test_a_login_flood_is_refused_without_filling_the_error_log(stack: Stack) -> None:
    """Rate-limit refusals go to the access log only: a refused login flood writes no error line."""
    error_log = stack.state_dir / "logs" / "error.log"
    before = error_log.read_bytes().count(b"\n")
    body = {"login": "nobody-here", "password": "wrong password here"}
    # From an address of its own: the failures that pass the gateway block their address at the
    # security service, and later tests (and benches) log in from 127.0.0.1.
    transport = httpx.HTTPTransport(local_address="127.0.0.93")
    with stack.client(transport=transport) as c:
        # Refusals take a millisecond: a hundred requests outrun the per-address rate at once.
        statuses = [c.post("/v1/token", json=body).status_code for _ in range(100)]
    assert statuses.count(429) >= 50, statuses
    assert error_log.read_bytes().count(b"\n") == before
