"""server.OneWriteCycle writes exactly the bytes uvicorn's own cycle writes, and a small answer
in one write: the same ASGI messages go through both cycles over a transport that records
what it is asked to write (the cycle's only contact with the socket)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from imagegate.server import OneWriteCycle


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.writes.append(b"".join(bytes(d) for d in list_of_data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


DATE = [(b"date", b"Mon, 30 Nov 2026 12:00:00 GMT")]


async def run(
    cls: type[RequestResponseCycle],
    messages: list[dict[str, Any]],
    *,
    method: str = "GET",
    keep_alive: bool = True,
) -> tuple[list[bytes], bool, BaseException | None]:
    transport = RecordingTransport()
    done: list[bool] = []
    cycle = cls(
        scope={"type": "http", "method": method},  # type: ignore[typeddict-item]
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=DATE,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: done.append(True),
    )
    error: BaseException | None = None
    try:
        for message in messages:
            await cycle.send(message)  # type: ignore[arg-type]
    except RuntimeError as exc:
        error = exc
    assert cycle.response_complete == bool(done)
    return transport.writes, transport.closed, error


def start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


def body(data: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


LENGTH = [(b"Content-Type", b"image/png"), (b"content-length", b"5")]

CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "small image": ([start(200, LENGTH), body(b"hello")], {}),
    "HEAD": ([start(200, LENGTH), body()], {"method": "HEAD"}),
    "304 without a length": ([start(304, [(b"etag", b'"x"')]), body()], {}),
    "closing": ([start(200, LENGTH), body(b"hello")], {"keep_alive": False}),
    "connection header": (
        [start(200, [*LENGTH, (b"connection", b"close")]), body(b"hello")],
        {},
    ),
    "chunked": ([start(200), body(b"ab", more=True), body(b"cd", more=True), body()], {}),
    "streamed with a length": (
        [start(200, LENGTH), body(b"he", more=True), body(b"llo")],
        {},
    ),
    "body too short": ([start(200, LENGTH), body(b"hell")], {}),
    "body too long": ([start(200, LENGTH), body(b"hello!")], {}),
    "bad header value": ([start(200, [*LENGTH, (b"x-a", b"a\r\nb")]), body(b"hello")], {}),
    "bad header name": ([start(200, [*LENGTH, (b"x a", b"b")]), body(b"hello")], {}),
}


@pytest.mark.parametrize("case", CASES)
async def test_the_same_bytes_as_uvicorn(case: str) -> None:
    messages, kwargs = CASES[case]
    theirs, their_close, their_error = await run(RequestResponseCycle, messages, **kwargs)
    ours, our_close, our_error = await run(OneWriteCycle, messages, **kwargs)
    assert b"".join(ours) == b"".join(theirs)
    assert our_close == their_close
    assert repr(our_error) == repr(their_error)


async def test_a_small_answer_is_one_write() -> None:
    for messages, kwargs in (CASES["small image"], CASES["HEAD"], CASES["304 without a length"]):
        theirs, *_ = await run(RequestResponseCycle, messages, **kwargs)
        ours, *_ = await run(OneWriteCycle, messages, **kwargs)
        assert len(ours) == 1
        assert len(theirs) == (2 if kwargs.get("method") != "HEAD" else 1)
    head, _, _ = b"".join(ours).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 304 ") and b"date: Mon" in head
    streamed, *_ = await run(OneWriteCycle, CASES["chunked"][0])
    assert len(streamed) == 3  # head with the first part, then one write per part
