"""Plain ASGI middleware: request ids, access log, metrics, a cap on request bodies, and a
timeout on stalled ones."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.errors import PayloadTooLarge, error_response
from imagegate.logs import KEY_ATTR
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
        self._ids: list[str] = []

    def _new_id(self) -> str:
        """128 random bits in hex, as a uuid4 has: drawn 64 at a time (one ``getrandom`` call
        instead of one per request)."""
        if not self._ids:
            pool = os.urandom(16 * 64).hex()
            self._ids = [pool[i : i + 32] for i in range(0, len(pool), 32)]
        return self._ids.pop()

    def request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The request's id: its own ``X-Request-Id`` when sane, else a new one."""
        for key, value in headers:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
                if _REQUEST_ID_RE.fullmatch(request_id):
                    return request_id
                break
        return self._new_id()

    def finish(
        self,
        client: tuple[str, int] | None,
        method: str,
        path: str,
        template: str,
        status: int,
        sent: int,
        elapsed: float,
        request_id: str,
    ) -> None:
        """A request's metrics and access-log line, once it is answered."""
        self.metrics.observe_request(template, method, status, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            # Errors are what a flood produces (429s of a login flood, 413s, 401s of token
            # guessing): the log handler's FloodFilter samples them per status and route.
            extra = {KEY_ATTR: (status, method, template)} if status >= 400 else None
            access_log.info(
                '%s "%s %s" %d %d %.1fms rid=%s',
                (client or ("-", 0))[0],
                method,
                path,
                status,
                sent,
                elapsed * 1000,
                request_id,
                extra=extra,
            )

    @classmethod
    def outermost(
        cls, app: Starlette, metrics: Metrics, *inner: Callable[[ASGIApp], ASGIApp]
    ) -> RequestContext:
        """Install ``RequestContext`` (then the ``inner`` middleware, outermost first) around
        the whole of ``app``'s middleware stack, FastAPI's own layers included (its error
        page, exception telemetry and body-limit wrappers): ``add_middleware`` puts a
        middleware inside those, and a small image answered by ``serving.ImageFastPath``
        paid three coroutine layers and a send wrapper for them (13,000 of 323,000 CPU
        instructions). An unhandled error's 500 carries the request id too. Returns the
        instance, whose app is set when Starlette builds the stack (on the first request)."""
        context = cls(app.router, metrics)
        build = app.build_middleware_stack

        def build_stack() -> ASGIApp:
            stack = build()
            for make in reversed(inner):
                stack = make(stack)
            context.app = stack
            return context

        app.build_middleware_stack = build_stack  # type: ignore[method-assign]
        return context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.request_id(scope["headers"])
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
            route = scope.get("route")
            self.finish(
                scope.get("client"),
                scope["method"],
                scope["path"],
                getattr(route, "path", None) or "unmatched",
                status,
                sent,
                time.perf_counter() - start,
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


class BodyTimeout:
    """408 for a request body that stalls: ``seconds`` with no part of it arriving while the app
    waits for one (NGINX's ``client_body_timeout``). The error is raised from ``receive`` inside
    the app, so whatever was reading the body cleans up as for any failed read (an upload's temp
    file is removed), and the answer says ``Connection: close``: the rest of the body is never
    read. Once the body is complete, ``receive`` is passed through: Starlette waits on it for a
    disconnect while it streams a response, for as long as that takes."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # GET and HEAD bodies are never read here: nothing to time.
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        seconds = self.seconds
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(seconds):
                    message = await receive()
            except TimeoutError:
                # An HTTPException, so FastAPI's body parsing passes it on instead of making
                # it a 400; the app's handler answers {"error"} with these headers.
                raise HTTPException(
                    408,
                    f"request body stalled: nothing received for {seconds:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)
