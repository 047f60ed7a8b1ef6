"""The HTTP server that runs an imagegate app: uvicorn with httptools, plus the connection
limits NGINX gives a production deployment, so that embedded mode has them too.

uvicorn has no cap on a request's header block or header count and no header or body read
timeout: a 50 MB header was read and kept, 10,000 headers were accepted, and stalled uploads
stayed open for good. ``LimitedHttpToolsProtocol`` (a subclass of uvicorn's httptools protocol)
adds, per connection:

- the header block (request line and headers) capped at ``http_max_header_bytes`` and
  ``http_max_headers`` lines: 431 with ``{"error"}``, then the connection closes; bytes past the
  cap are never given to the parser, so an oversized header costs no memory;
- ``http_header_timeout_seconds`` to receive a request's headers, from the connection's start
  for its first request (NGINX's ``client_header_timeout``): 408 when part of a request came,
  else a plain close;
- ``http_keepalive_requests`` requests per connection (the last answer says
  ``Connection: close``) and ``http_keepalive_timeout_seconds`` idle between them;
- ``http_max_connections`` open connections: one more is answered 503 at once and closed.

The body timeout (``http_body_timeout_seconds``) is ``middleware.BodyTimeout``, which raises
inside the app so that an upload's temp file is removed like on any failed read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import uvicorn
from fastapi import FastAPI
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_remote_addr

from imagegate import logs
from imagegate.logs import KEY_ATTR
from imagegate.middleware import BodyTimeout, RequestContext
from imagegate.serving import ImageFastPath
from imagegate.settings import Settings

access_log = logging.getLogger("imagegate.access")

# After a rejection the connection is half-closed and what the client still sends is read and
# dropped for this long, so that the answer is read before a reset (NGINX's lingering close).
LINGER_SECONDS = 2.0
# What a connection waits for, with a deadline: a request's headers, or (idle) the next one.
_HEADERS, _IDLE, _NOTHING = object(), object(), object()


@dataclass(frozen=True)
class Limits:
    """Per-connection limits, from the ``http_*`` settings."""

    max_header_bytes: int
    max_headers: int
    header_timeout: float
    keepalive_requests: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            max_headers=settings.http_max_headers,
            header_timeout=settings.http_header_timeout_seconds,
            keepalive_requests=settings.http_keepalive_requests,
            max_connections=settings.http_max_connections,
        )


@dataclass(frozen=True)
class ImmediateAnswers:
    """What the server answers itself, in the parser's callback, before a request becomes an
    ASGI task: ``ImageFastPath.answer_now``'s cached public images, with the request id,
    metrics and access-log line the app's ``RequestContext`` gives every request. A hot
    thumbnail then costs no task, no coroutine layers and no ASGI messages (embedded thumb
    0.30 → 0.38 of NGINX static)."""

    fast_path: ImageFastPath
    context: RequestContext


class _Batch:
    """Stands in for the transport while a response's head and first body part are written:
    both leave in one ``writelines`` (one ``writev``, no copy) when the batch is flushed."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parts: list[bytes] = []
        self.close_after = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.close_after = True

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def flush(self) -> None:
        if self.parts:
            self.transport.writelines(self.parts)
        if self.close_after:
            self.transport.close()


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request-response cycle writing the status line and headers together with the
    first body part: one syscall and one TCP segment for a small answer instead of two (uvicorn
    writes the head as soon as the app sends ``http.response.start``). The head is held until
    the first ``http.response.body`` message, which every response sends, at once for a small
    one. An app that fails in between never started its response: uvicorn answers 500.

    A whole response in one body message with its length known (any small answer) is written
    here (``_write_whole``), as uvicorn would write it but with one pattern search over all
    header names and one over all values instead of two per header, and no second pass through
    uvicorn's ``send``; anything else goes through uvicorn's own code."""

    _held: ASGISendEvent | None = None

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "http.response.start"
            and not self.response_started
            and self._held is None
            and not self.disconnected
        ):
            self._held = message
            return
        held, self._held = self._held, None
        if held is None:
            await super().send(message)
            return
        if self._write_whole(held, message):
            return
        transport = self.transport
        batch = _Batch(transport)
        self.transport = batch  # type: ignore[assignment]  # only write, close, is_closing
        try:
            await super().send(held)
            await super().send(message)
        finally:
            self.transport = transport
            batch.flush()

    def _write_whole(self, start: ASGISendEvent, message: ASGISendEvent) -> bool:
        """Write the response (``start`` then the complete body ``message``) and complete the
        cycle as uvicorn's ``send`` does; False (nothing done) for any case this does not
        cover: uvicorn's code then writes it, or raises its error."""
        if (
            message["type"] != "http.response.body"
            or message.get("more_body", False)
            or self.flow.write_paused
            or self.disconnected
            or self.access_log
        ):
            return False
        status: int = start["status"]  # type: ignore[typeddict-item]
        headers = [*self.default_headers, *start.get("headers", ())]  # type: ignore[misc]
        if HEADER_RE.search(b"".join([n for n, _ in headers])) or HEADER_VALUE_RE.search(
            b"".join([v for _, v in headers])
        ):
            return False  # uvicorn raises its error
        content = [STATUS_LINE[status]]
        length = -1
        for name, value in headers:
            name = name.lower()
            if name == b"content-length":
                if length < 0:
                    length = int(value.decode())
            elif name in (b"transfer-encoding", b"connection"):
                return False
            content.extend([name, b": ", value, b"\r\n"])
        body: bytes = message.get("body", b"")
        head = self.scope["method"] == "HEAD"
        if length < 0 and not (head or status in (204, 304)):
            return False  # chunked: uvicorn's
        if not head and len(body) != max(length, 0):
            return False  # uvicorn raises its error
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        self.response_started = True
        self.waiting_for_100_continue = False
        if head or not body:
            self.transport.write(b"".join(content))
        else:
            self.transport.writelines([b"".join(content), body])
        self.expected_content_length = 0
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with NGINX's connection limits (see the module doc).

    Timeouts are deadlines checked by one lazily re-armed timer per connection, not a timer
    per request: a uvloop timer costs 3.5 µs to arm and cancel, 4 % of a small request, and
    uvicorn armed one per response for its keep-alive timeout. The timer never waits longer
    than the shortest timeout (``_tick``), so any deadline set while it runs is met; when it
    fires early it re-arms for what is left, and when no deadline is set it lapses."""

    limits: ClassVar[Limits]
    immediate: ClassVar[ImmediateAnswers | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answered = False  # the current request was answered in on_headers_complete
        self._reading_headers = True  # from a request's first byte to the end of its headers
        self._header_bytes = 0
        self._header_count = 0
        self._too_many_headers = False
        self._served = 0
        self._deadline: float | None = None  # when the current wait (``_waiting``) times out
        self._waiting = _NOTHING
        self._timer: asyncio.TimerHandle | None = None
        self._tick = min(self.limits.header_timeout, self.timeout_keep_alive)
        self._rejected = False
        self._lost = False

    # --- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Not counted, not served: answered at once; the client's request is read and
            # dropped while the answer goes out.
            self.transport = transport
            self.client = get_remote_addr(transport)
            self._reject(503, "the server is at its connection limit; try again later", 5)
            return
        super().connection_made(transport)
        # The first request's headers are due from the start (NGINX: client_header_timeout).
        self._wait(_HEADERS, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # lingering: drop what the client still sends
        if self._waiting is _IDLE:
            self._waiting, self._deadline = _NOTHING, None
        view: bytes | memoryview = data
        try:
            while view:
                if not self._reading_headers:
                    self.parser.feed_data(view)
                    return
                room = self.limits.max_header_bytes - self._header_bytes
                if len(view) <= room:
                    self._header_bytes += len(view)
                    self.parser.feed_data(view)
                    return
                # Give the parser only what fits under the cap; if the headers did not end
                # within it, the request is refused without reading (or keeping) the rest.
                head, view = memoryview(view)[:room], memoryview(view)[room:]
                self._header_bytes += room
                self.parser.feed_data(head)
                if self._reading_headers:
                    self._reject(
                        431,
                        f"request line and headers are over {self.limits.max_header_bytes} bytes",
                    )
                    return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # uvicorn's answer: the request is served as is
        except httptools.HttpParserError:  # a callback's error too (a non-ASCII path, ...)
            if self._too_many_headers:
                self._reject(431, f"request has more than {self.limits.max_headers} header lines")
            else:
                self._reject(400, "malformed HTTP request")

    # --- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._waiting is not _HEADERS:  # the first request's deadline runs already
            self._wait(_HEADERS, self.limits.header_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._too_many_headers = True
            raise ValueError("too many headers")  # httptools stops parsing and raises
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._waiting, self._deadline = _NOTHING, None
        self._reading_headers = False
        if self.immediate is not None and self._answer_now(self.immediate):
            return
        # uvicorn's method makes the cycle by the name RequestResponseCycle in its module: that
        # name is OneWriteCycle while it runs (rather than a copy of the method). Setting the
        # class of the cycle afterwards cost more than the write it saves: CPython 3.11 then
        # keeps the object's attributes in a dict, and every access to them is slower.
        httptools_impl.RequestResponseCycle = OneWriteCycle  # type: ignore[misc]
        try:
            super().on_headers_complete()
        finally:
            httptools_impl.RequestResponseCycle = RequestResponseCycle  # type: ignore[misc]
        self._served += 1
        if self._served >= self.limits.keepalive_requests:
            self.cycle.keep_alive = False  # the answer says Connection: close

    def on_message_complete(self) -> None:
        if self._answered:
            self._answered = False  # no cycle of its own to complete
        else:
            super().on_message_complete()
        self._reading_headers = True
        self._header_bytes = 0

    def _answer_now(self, immediate: ImmediateAnswers) -> bool:
        """Answer a GET that ``answer_now`` takes, as the app would have (same headers, id,
        log line and metrics); False (nothing done) for anything else: a request while
        another is in progress (pipelined) or while the client is not reading, HTTP/1.0, a
        body, an upgrade, a query or an escaped path."""
        parser = self.parser
        if (
            (self.cycle is not None and not self.cycle.response_complete)
            or self.flow.write_paused
            or parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or self.root_path
        ):
            return False
        url = httptools.parse_url(self.url)
        if url.query or b"%" in url.path:
            return False
        start = time.perf_counter()
        path = url.path.decode("ascii")
        try:
            found = immediate.fast_path.answer_now(path, self.headers)
        except Exception:  # any doubt is the app's to answer (and to log)
            return False
        if found is None:
            return False
        headers, body, template = found
        request_id = immediate.context.request_id(self.headers)
        self._served += 1
        keep_alive = parser.should_keep_alive() and self._served < self.limits.keepalive_requests
        content = [STATUS_LINE[200]]
        for name, value in (*self.server_state.default_headers, *headers):
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"x-request-id: ", request_id.encode(), b"\r\n"])
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        self.transport.writelines([b"".join(content), body])
        self._answered = True
        immediate.context.finish(
            self.client,
            "GET",
            path,
            template,
            200,
            len(body),
            time.perf_counter() - start,
            request_id,
        )
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()
        return True

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout as a deadline instead of a new timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._waiting is _NOTHING:  # (not while a pipelined request's headers come in)
            self._wait(_IDLE, self.timeout_keep_alive)

    # --- deadlines -------------------------------------------------------------------

    def _wait(self, what: object, seconds: float) -> None:
        self._waiting = what
        self._deadline = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_later(min(seconds, self._tick), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._lost or self._deadline is None:
            return  # nothing to time: the timer lapses until the next wait
        left = self._deadline - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(min(left, self._tick), self._on_timer)
            return
        what = self._waiting
        self._waiting, self._deadline = _NOTHING, None
        if what is _IDLE:
            self.timeout_keep_alive_handler()
        else:
            self._header_timeout()

    def _header_timeout(self) -> None:
        if self.transport.is_closing() or not self._reading_headers:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined request stalled: close after this answer
            return
        if self._header_bytes:
            self._reject(
                408, f"request headers not received within {self.limits.header_timeout:g} s"
            )
        else:
            self._abort()  # a connection that never sent a request: no answer

    def _reject(self, status: int, message: str, retry_after: int | None = None) -> None:
        """Answer ``status`` with ``{"error": message}``, half-close, and close soon after."""
        self._rejected = True
        self._waiting, self._deadline = _NOTHING, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        client = self.client[0] if self.client else "-"
        # Rejections are what floods produce: sampled per status by the log's FloodFilter.
        access_log.info(
            "%s %d %s", client, status, message, extra={KEY_ATTR: (status, "connection")}
        )
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is in progress: no second answer in the middle of its own. If its
            # body was still coming (a malformed chunk), close now: the app sees a disconnect,
            # as with uvicorn. Else (a pipelined request went wrong) close after the answer.
            self.cycle.keep_alive = False
            if self.cycle.more_body:
                self.transport.close()
            return
        body = json.dumps({"error": message}).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        if retry_after is not None:
            content.append(b"retry-after: %d\r\n" % retry_after)
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        transport.write(b"".join(content))
        if transport.can_write_eof():
            transport.write_eof()
        if self.flow is not None:
            self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_SECONDS, self._abort)  # cancelled on close

    def _abort(self) -> None:
        # abort, not close: over TLS a close waits up to 30 s for the client's close_notify,
        # and the connection would count against the cap (and delay a shutdown) meanwhile.
        if not self._lost:
            self.transport.abort()


def protocol_class(
    limits: Limits, immediate: ImmediateAnswers | None = None
) -> type[LimitedHttpToolsProtocol]:
    """A ``LimitedHttpToolsProtocol`` bound to these limits and answers (uvicorn builds one
    per connection)."""
    return type(
        "ImagegateHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "immediate": immediate},
    )


def run(app: FastAPI, settings: Settings, ssl: dict[str, Any]) -> None:
    """Serve ``app`` on the settings' host and port until SIGTERM/SIGINT (graceful)."""
    logs.install()
    uvicorn.run(
        BodyTimeout(app, settings.http_body_timeout_seconds),
        host=settings.host,
        port=settings.port,
        # Behind trusted proxies the client's address is the app's to read (uvicorn's proxy
        # headers middleware): the server answers nothing itself then.
        http=protocol_class(
            Limits.from_settings(settings),
            None if settings.trusted_proxies else getattr(app.state, "immediate", None),
        ),
        ws="none",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        timeout_keep_alive=settings.http_keepalive_timeout_seconds,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        **ssl,
    )
