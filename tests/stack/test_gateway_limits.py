"""Header floods at the gateway: NGINX refuses them in the service's JSON error shape (431), never
passes them on, and keeps serving everyone else."""

from __future__ import annotations

import contextlib
import socket

import httpx
import pytest

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
