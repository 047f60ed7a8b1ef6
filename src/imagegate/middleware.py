"""Plain ASGI middleware: request ids, access log, metrics, and a cap on request bodies."""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.errors import PayloadTooLarge, error_response
from imagegate.metrics import Metrics

access_log = logging.getLogger("imagegate.access")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _header(scope: Scope, name: bytes) -> bytes:
    """The first value of header ``name`` (lower-case), or b"" when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


class RequestContext:
    """Gives every request an ``X-Request-Id`` (a sane incoming one, or a new one), logs it
    with the outcome, and counts it by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id").decode("latin-1")
        # 128 random bits, as a uuid4 has, without building a UUID object per request
        request_id = incoming if _REQUEST_ID_RE.fullmatch(incoming) else os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        sent = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.observe_request(template, method, status, elapsed)
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %d %.1fms rid=%s',
                client[0],
                method,
                scope["path"],
                status,
                sent,
                elapsed * 1000,
                request_id,
            )


class BodyLimit:
    """Rejects bodies over ``max_bytes`` with 413, from Content-Length or while streaming.
    Paths in ``exempt`` enforce their own (larger) limit while they stream."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: frozenset[str]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length and (not length.isdigit() or int(length) > self.max_bytes):
            response = error_response(413, f"request body over {self.max_bytes} bytes")
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
