"""Sending webhook deliveries: one signed POST over HTTP, and the loop that sends due ones.

One attempt (:func:`send`), all within ``IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS``:
resolve the host and check every address (:mod:`.ssrf`), connect to one of *those* addresses
(the connection is pinned: nothing resolves the name again, so DNS cannot move it between
the check and the connection), with TLS verified against the URL's host name (SNI and
certificate), send the request, read the status and at most 1 KiB of the body. Redirects are
not followed: a 3xx is a failure. The HTTP/1.1 exchange is h11's state machine (uvicorn's),
over asyncio streams, so the socket and its address stay in our hands.

:class:`DeliveryLoop` runs in the processes that handle events (embedded mode, and the
worker role): it claims due deliveries (a lease; see :func:`.deliveries.claim_due`), sends
at most ``CONCURRENCY`` at once, and records each outcome with the retry schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import h11
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.db.types import utcnow
from imagegate.settings import Settings
from imagegate.webhooks import deliveries, signing, ssrf

log = logging.getLogger("imagegate.webhooks")

MAX_URL_LENGTH = 2048
MAX_RESPONSE_BODY = 1024  # bytes of a response body read and kept (in last_error)
MAX_ERROR_LENGTH = 1024  # the last_error column
MAX_RESPONSE_HEAD = 16 * 1024  # status line and headers; more is a protocol error
CONCURRENCY = 16  # attempts in flight per process
POLL_SECONDS = 1.0  # how often an idle loop looks for due retries (new ones wake it at once)
PRUNE_EVERY_SECONDS = 3600.0
RETENTION = timedelta(days=7)  # finished deliveries stay listed this long
_HOST_RE = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class InvalidURL(ValueError):
    """A webhook URL we will not send to; the message says why (for a 422)."""


@dataclass(frozen=True)
class Target:
    """Where a URL sends to: scheme, host (ASCII, IPv6 without brackets), port, request
    target (path and query) and the Host header."""

    scheme: str
    host: str
    port: int
    path: str
    host_header: str


def parse_url(url: str) -> Target:
    """The target of a webhook URL; InvalidURL when it is not an absolute http(s) URL with a
    host, or has user info, a fragment, spaces or control characters."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidURL("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError as exc:  # a bad port, or a malformed [IPv6] literal
        raise InvalidURL(f"is not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidURL("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise InvalidURL("must not contain a user name or password")
    if parts.fragment or url.endswith("#"):
        raise InvalidURL("must not have a fragment (#...)")
    if not host:
        raise InvalidURL("has no host")
    if port == 0:
        raise InvalidURL("port 0 is not a port")
    request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not request_target.isascii():
        raise InvalidURL("path and query must be ASCII (percent-encode other characters)")
    if "%" in host:  # an IPv6 zone ("fe80::1%eth0") or an encoded name: no such hosts
        raise InvalidURL("has an invalid host")
    literal = ssrf.ip_literal(host)
    if literal is None:
        if ":" in host:
            raise InvalidURL("has an invalid host")
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURL("has an invalid host name") from exc
        if not _HOST_RE.fullmatch(host) or len(host) > 253:
            raise InvalidURL("has an invalid host name")
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    shown = f"[{host}]" if literal is not None and literal.version == 6 else host
    header = shown if port == default_port else f"{shown}:{port}"
    return Target(scheme, host, port, request_target, header)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: delivered (a 2xx), and the status and error to record."""

    delivered: bool
    status: int | None
    error: str | None


def _clip(text: str) -> str:
    # Response bytes are the remote's: no control characters (NUL cannot even be stored in a
    # PostgreSQL text column) and no more than the column holds.
    return _CONTROL.sub("\ufffd", text)[:MAX_ERROR_LENGTH]


class _Exchange:
    """One request/response on a connected stream; keeps what arrived even if time runs out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.response: h11.Response | None = None
        self.body = bytearray()

    async def _next(self) -> h11.Event | None:
        """The next HTTP event, reading as needed; None when h11 pauses (the exchange is
        over)."""
        while True:
            event = self.http.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return None
            self.http.receive_data(await self.reader.read(4096))  # b"": end of stream

    async def run(self, target: Target, headers: Mapping[str, str], body: bytes) -> None:
        request = h11.Request(
            method="POST",
            target=target.path,
            headers=[
                ("host", target.host_header),
                ("content-length", str(len(body))),
                ("connection", "close"),
                *headers.items(),
            ],
        )
        self.writer.write(self.http.send(request) or b"")
        self.writer.write(self.http.send(h11.Data(data=body)) or b"")
        self.writer.write(self.http.send(h11.EndOfMessage()) or b"")
        await self.writer.drain()
        while self.response is None:
            event = await self._next()
            if isinstance(event, h11.Response):
                self.response = event
            elif not isinstance(event, h11.InformationalResponse):  # 100 Continue and such
                raise h11.RemoteProtocolError("the connection ended before a response")
        if 200 <= self.response.status_code < 300:
            return  # delivered: the body is not needed
        while len(self.body) < MAX_RESPONSE_BODY:
            event = await self._next()
            if not isinstance(event, h11.Data):
                break  # EndOfMessage, or the connection closed
            self.body += bytes(event.data)[: MAX_RESPONSE_BODY - len(self.body)]

    def outcome(self, note: str | None = None) -> Outcome:
        assert self.response is not None
        status = self.response.status_code
        if 200 <= status < 300:
            return Outcome(True, status, None)
        reason = self.response.reason.decode("latin-1")
        error = f"HTTP {status} {reason}".rstrip()
        if 300 <= status < 400:
            location = dict(self.response.headers).get(b"location", b"").decode("latin-1")
            error += f" (a redirect to {location[:200]!r}, not followed)"
        if note:
            error += f" [{note}]"
        if self.body:
            error += ": " + bytes(self.body).decode("utf-8", errors="replace")
        return Outcome(False, status, _clip(error))


async def _connect(
    target: Target, addresses: Sequence[ssrf.Address], tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of the checked ``addresses`` that accepts one; TLS is
    verified against the URL's host name, never the address."""
    error: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(
                str(address),
                target.port,
                ssl=tls,
                server_hostname=target.host if tls is not None else None,
            )
        except ssl.SSLError:
            raise  # the server answered: another of its addresses would not do better
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


def _os_error(exc: OSError, *, connected: bool) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    what = "connection lost" if connected else "cannot connect"
    return f"{what}: {exc.strerror or type(exc).__name__}"


async def send(
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    allowed: Sequence[ssrf.Network],
    time_limit: float,
    tls: ssl.SSLContext,
) -> Outcome:
    """One attempt to POST ``body`` to ``url``: never raises for anything the remote side or
    the network does; the outcome says what happened."""
    exchange: _Exchange | None = None
    try:
        target = parse_url(url)
        async with asyncio.timeout(time_limit):
            addresses = await ssrf.resolve(target.host, target.port, allowed, time_limit=time_limit)
            reader, writer = await _connect(
                target, addresses, tls if target.scheme == "https" else None
            )
            exchange = _Exchange(reader, writer)
            try:
                await exchange.run(target, headers, body)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    writer.transport.abort()  # no lingering TLS close_notify wait
        return exchange.outcome()
    except TimeoutError:
        if exchange is not None and exchange.response is not None:
            return exchange.outcome(note=f"body cut: no end within {time_limit:g} s")
        return Outcome(False, None, f"timed out: no answer within {time_limit:g} s")
    except InvalidURL as exc:
        return Outcome(False, None, _clip(f"invalid URL: {exc}"))
    except ssrf.AddressRefused as exc:
        return Outcome(False, None, _clip(exc.message))
    except h11.ProtocolError as exc:
        return Outcome(False, None, _clip(f"invalid HTTP response: {exc}"))
    except OSError as exc:
        return Outcome(False, None, _clip(_os_error(exc, connected=exchange is not None)))


# --- the loop ---------------------------------------------------------------------------

_loops: weakref.WeakSet[DeliveryLoop] = weakref.WeakSet()


def notify() -> None:
    """Tell this process's delivery loops that deliveries were queued, so the new ones go out
    now rather than at the next poll."""
    for loop in list(_loops):
        loop.wake()


def local_loop() -> DeliveryLoop | None:
    """This process's running delivery loop, if any (there is at most one)."""
    return next(iter(_loops), None)


class DeliveryLoop:
    """Sends due deliveries with bounded concurrency, records outcomes, prunes old ones."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        concurrency: int = CONCURRENCY,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        # Parsed now: a bad IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS stops the start, loudly.
        self.allowed = ssrf.allowed_networks(settings.webhook_allowed_networks)
        self.tls = ssl.create_default_context()
        # An attempt takes at most the timeout; the lease adds room for recording it.
        self.lease = timedelta(seconds=settings.webhook_timeout_seconds + 60)
        self._wakeup = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], deliveries.Claimed] = {}
        # Handed over by this process's handler, claimed already: sent before any claim.
        self._ready: deque[deliveries.Claimed] = deque()
        self._due = True  # whether to claim on the next turn: at start, a poll, a wake
        self._claimed_at = 0.0  # time.monotonic() of the last claim
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self._warned_at = 0.0

    def start(self) -> None:
        """Run the loop as a background task of the running event loop."""
        self._task = asyncio.create_task(self.run(), name="webhook-deliveries")
        _loops.add(self)

    async def stop(self) -> None:
        """Stop claiming and cancel attempts in flight, handing their deliveries back (due
        now) for the next loop; an attempt cut short may have arrived, and is sent again
        (receivers drop duplicates by webhook-id)."""
        _loops.discard(self)
        self._stopped = True
        cut_short = [*self._inflight.values(), *self._ready]
        self._ready.clear()
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if cut_short:
            try:
                async with self.sessions() as session:
                    await deliveries.release(session, cut_short, now=utcnow())
            except (sa_exc.SQLAlchemyError, OSError) as exc:
                log.warning("webhook deliveries not handed back (their leases will end): %s", exc)

    def wake(self) -> None:
        """Deliveries were queued due: claim them now rather than at the next poll."""
        self._due = True
        self._wakeup.set()

    def hold(self, webhook_ids: Sequence[str], now: datetime) -> deliveries.Hold | None:
        """A claim for new deliveries to those of ``webhook_ids`` this loop has room for
        (within its concurrency and the per-webhook limit), so they are queued claimed and
        then handed over; None when it has no room (they are queued due, for any loop)."""
        if self._stopped or len(self._inflight) + len(self._ready) >= self.concurrency:
            return None
        busy = self._busy()
        room = frozenset(w for w in webhook_ids if busy[w] < deliveries.PER_WEBHOOK)
        if not room:
            return None
        return deliveries.Hold(str(uuid.uuid4()), now + self.lease, room)

    def hand_over(self, claimed: Sequence[deliveries.Claimed]) -> None:
        """Send these (queued under this loop's :meth:`hold`, committed) as soon as a slot
        is free."""
        self._ready.extend(claimed)
        self._wakeup.set()  # no claim needed: they are ours

    def _busy(self) -> Counter[str]:
        return Counter(d.webhook_id for d in (*self._inflight.values(), *self._ready))

    async def run(self) -> None:
        """Claim and send until cancelled; the database being away only pauses it."""
        while True:
            self._wakeup.clear()
            while self._ready and len(self._inflight) < self.concurrency:
                self._launch(self._ready.popleft())
            free = self.concurrency - len(self._inflight)
            claimed: list[deliveries.Claimed] = []
            # The poll is by time, not by a quiet wait: hand-overs and finished attempts end
            # every wait early while events flow, and retries must still come round.
            if time.monotonic() - self._claimed_at >= self.poll_seconds:
                self._due = True
            if free > 0 and self._due:
                self._due = False
                self._claimed_at = time.monotonic()
                try:
                    claimed = await self._claim(free)
                    await self._maybe_prune()
                except (sa_exc.SQLAlchemyError, OSError) as exc:
                    self._warn(f"webhook deliveries paused: database unavailable: {exc}")
                for delivery in claimed:
                    self._launch(delivery)
                if claimed and len(claimed) == free:
                    self._due = True  # more may be due: claim again (or wait for a slot)
                    continue
            await self._wait()

    def _launch(self, delivery: deliveries.Claimed) -> None:
        task = asyncio.create_task(self._attempt(delivery))
        self._inflight[task] = delivery
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)

    async def _wait(self) -> None:
        """Until woken, an attempt finishes (a slot frees), or the poll interval passes."""
        wakeup = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait(
                {wakeup, *self._inflight},
                timeout=self.poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            wakeup.cancel()

    async def _claim(self, limit: int) -> list[deliveries.Claimed]:
        now = utcnow()
        async with self.sessions() as session:
            return await deliveries.claim_due(
                session,
                now=now,
                lease_until=now + self.lease,
                limit=limit,
                busy=self._busy(),
            )

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = time.monotonic()
        async with self.sessions() as session:
            removed = await deliveries.prune_finished(session, before=utcnow() - RETENTION)
            closed = await deliveries.prune_closed(session, before=utcnow() - RETENTION)
        if removed or closed:
            log.info(
                "pruned %d finished webhook deliveries and %d webhooks of deleted accounts",
                removed,
                closed,
            )

    async def _attempt(self, delivery: deliveries.Claimed) -> None:
        s = self.settings
        started = utcnow()
        body = delivery.payload.encode("utf-8")
        headers = signing.signed_headers(delivery.secret, delivery.event_id, body, int(time.time()))
        outcome = await send(
            delivery.url,
            headers,
            body,
            allowed=self.allowed,
            time_limit=s.webhook_timeout_seconds,
            tls=self.tls,
        )
        try:
            async with self.sessions() as session:
                status = await deliveries.record_attempt(
                    session,
                    delivery,
                    started=started,
                    now=utcnow(),
                    delivered=outcome.delivered,
                    status=outcome.status,
                    error=outcome.error,
                    base_seconds=s.webhook_retry_base_seconds,
                    window_seconds=s.webhook_retry_seconds,
                )
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            # The lease runs out and the delivery is attempted again.
            self._warn(f"webhook delivery {delivery.id}: outcome not recorded: {exc}")
            return
        _log_outcome(delivery, outcome, status)

    def _warn(self, message: str) -> None:
        # At most one line a minute: a database outage must not flood the log.
        if time.monotonic() - self._warned_at >= 60:
            self._warned_at = time.monotonic()
            log.warning("%s", message)


def _log_outcome(delivery: deliveries.Claimed, outcome: Outcome, status: str | None) -> None:
    # Never the secret, the URL (its path or query may hold the receiver's token) nor the body.
    what = f"webhook {delivery.webhook_id} event {delivery.event_id}"
    attempt = delivery.attempts + 1
    if status == deliveries.DELIVERED:
        log.debug("%s delivered (attempt %d)", what, attempt)
    elif status == deliveries.FAILED:
        log.warning("%s failed for good after %d attempts: %.200s", what, attempt, outcome.error)
    elif status == deliveries.PENDING:
        log.info("%s attempt %d failed, will retry: %.200s", what, attempt, outcome.error)
