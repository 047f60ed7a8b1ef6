"""HTTP/1.1 by hand over a socket, for what an HTTP client library will not do: send headers and
only part of a body (or none), read the answer while the body is still owed, or leave after
sending a whole request without waiting for the answer. Plus polling /metrics."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(base_url: str, timeout: float = 30.0) -> socket.socket:
    parts = urlsplit(base_url)
    assert parts.scheme == "http", "raw requests are plain HTTP (embedded servers)"
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout)


def send_request_head(
    sock: socket.socket,
    method: str,
    path: str,
    headers: dict[str, str],
    content_length: int | None = None,
) -> None:
    """The request line and headers; the body (if any) is the caller's to send."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def start_upload(
    base_url: str, token: str, body: bytes, content_length: int | None = None
) -> socket.socket:
    """POST /v1/upload declaring ``content_length`` (default: the body's) and sending ``body``;
    the socket stays open for the caller to finish, read or abandon."""
    sock = connect(base_url)
    send_request_head(
        sock,
        "POST",
        "/v1/upload",
        {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
        len(body) if content_length is None else content_length,
    )
    if body:
        sock.sendall(body)
    return sock


def read_response(sock: socket.socket, timeout: float = 30.0) -> RawResponse:
    """One response (with a Content-Length body) read within ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full answer: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return RawResponse(int(status_line.split()[1]), headers, rest[:length])


def close_now(sock: socket.socket) -> None:
    """Leave without reading the answer (a client that gave up)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def metrics(base_url: str) -> dict[str, float]:
    """Every sample at /metrics, keyed by ``name{labels}`` as exposed."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05
) -> None:
    """Poll ``check`` until it holds; AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
