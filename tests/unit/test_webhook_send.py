"""One webhook delivery attempt (``delivery.send``) against real servers on loopback: what is
sent, what counts as delivered, and the limits (redirects, 1 KiB of body, time, TLS, SSRF)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from imagegate.tls import ensure_self_signed
from imagegate.webhooks import ssrf
from imagegate.webhooks.delivery import MAX_ERROR_LENGTH, send

LOOPBACK = ssrf.parse_networks(["127.0.0.0/8"])
HEADERS = {"content-type": "application/json", "webhook-id": "e1"}
BODY = b'{"id":"e1"}'

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Seen:
    """What the test server received: request heads and bodies, and TLS server names."""

    heads: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    connections: int = 0


async def _read_request(reader: asyncio.StreamReader, seen: Seen) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    seen.heads.append(head)
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    seen.bodies.append(await reader.readexactly(length))


@contextlib.asynccontextmanager
async def serving(
    answer: Answer, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: seen.server_names.append(name)  # type: ignore[assignment,func-returns-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        try:
            await _read_request(reader, seen)
            await answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away: its side is what the tests check
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


def status(code: int, body: bytes = b"", extra: str = "") -> Answer:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {code} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body
        )
        await writer.drain()

    return answer


async def test_a_2xx_is_delivered_with_our_headers_and_body() -> None:
    async with serving(status(204)) as (port, seen):
        outcome = await send(
            f"http://127.0.0.1:{port}/hook?a=1",
            HEADERS,
            BODY,
            allowed=LOOPBACK,
            time_limit=10,
            tls=ssl.create_default_context(),
        )
    assert outcome.delivered and outcome.status == 204 and outcome.error is None
    head = seen.heads[0].lower()
    assert head.startswith("post /hook?a=1 http/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n" in head
    assert "webhook-id: e1\r\n" in head
    assert seen.bodies == [BODY]


async def test_a_redirect_is_a_failure_and_not_followed() -> None:
    async with serving(status(200)) as (other_port, other):
        location = f"location: http://127.0.0.1:{other_port}/elsewhere\r\n"
        async with serving(status(302, extra=location)) as (port, seen):
            outcome = await send(
                f"http://127.0.0.1:{port}/",
                HEADERS,
                BODY,
                allowed=LOOPBACK,
                time_limit=10,
                tls=ssl.create_default_context(),
            )
    assert not outcome.delivered and outcome.status == 302
    assert outcome.error is not None and "not followed" in outcome.error
    assert seen.connections == 1 and other.connections == 0


async def test_at_most_1_kib_of_a_response_body_is_kept() -> None:
    huge = b"\x00<html>" + b"x" * 1_000_000  # with a NUL, which a database column refuses
    async with serving(status(500, huge)) as (port, _):
        outcome = await send(
            f"http://127.0.0.1:{port}/",
            HEADERS,
            BODY,
            allowed=LOOPBACK,
            time_limit=10,
            tls=ssl.create_default_context(),
        )
    assert not outcome.delivered and outcome.status == 500
    assert outcome.error is not None
    assert outcome.error.startswith("HTTP 500 X: \ufffd<html>xxx")
    assert len(outcome.error) <= MAX_ERROR_LENGTH
    assert "\x00" not in outcome.error


async def test_a_receiver_that_never_answers_times_out() -> None:
    never = asyncio.Event()

    async def stall(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        await never.wait()

    async with serving(stall) as (port, seen):
        outcome = await send(
            f"http://127.0.0.1:{port}/",
            HEADERS,
            BODY,
            allowed=LOOPBACK,
            time_limit=0.5,
            tls=ssl.create_default_context(),
        )
        never.set()
    assert not outcome.delivered and outcome.status is None
    assert outcome.error == "timed out: no answer within 0.5 s"
    assert seen.bodies == [BODY]  # the request did arrive


async def test_a_refused_address_is_never_connected_to() -> None:
    async with serving(status(200)) as (port, seen):
        outcome = await send(
            f"http://127.0.0.1:{port}/",
            HEADERS,
            BODY,
            allowed=(),
            time_limit=10,
            tls=ssl.create_default_context(),
        )
        metadata = await send(
            "http://169.254.169.254/latest/meta-data/",
            HEADERS,
            BODY,
            allowed=LOOPBACK,
            time_limit=10,
            tls=ssl.create_default_context(),
        )
    assert not outcome.delivered and outcome.error is not None and "loopback" in outcome.error
    assert seen.connections == 0
    assert metadata.error is not None and "cloud metadata" in metadata.error


async def test_nothing_listening_is_a_connection_failure() -> None:
    async with serving(status(200)) as (port, _):
        pass  # closed: nothing listens on the port any more
    outcome = await send(
        f"http://127.0.0.1:{port}/",
        HEADERS,
        BODY,
        allowed=LOOPBACK,
        time_limit=10,
        tls=ssl.create_default_context(),
    )
    assert not outcome.delivered and outcome.error is not None
    assert outcome.error.startswith("cannot connect")


def _server_tls(directory: Path, hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = ensure_self_signed(directory, (hostname,))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Path,
) -> None:
    server_tls, client_tls = _server_tls(tmp_path, "localhost")
    async with serving(status(200), server_tls) as (port, seen):
        outcome = await send(
            f"https://localhost:{port}/hook",
            HEADERS,
            BODY,
            allowed=LOOPBACK,
            time_limit=10,
            tls=client_tls,
        )
    assert outcome.delivered, outcome
    # The connection went to the resolved address, yet TLS named the host (SNI, and the
    # certificate was checked for it) and so did the Host header.
    assert seen.server_names == ["localhost"]
    assert f"host: localhost:{port}\r\n" in seen.heads[0].lower()


async def test_https_refuses_a_certificate_for_another_name(tmp_path: Path) -> None:
    server_tls, client_tls = _server_tls(tmp_path, "other.test")
    async with serving(status(200), server_tls) as (port, seen):
        outcome = await send(
            f"https://localhost:{port}/hook",
            HEADERS,
            BODY,
            allowed=LOOPBACK,
            time_limit=10,
            tls=client_tls,
        )
    assert not outcome.delivered
    assert outcome.error is not None and "certificate" in outcome.error, outcome
    assert seen.bodies == []
