"""Receive an upload body into a temp file, streamed, under a hard size cap.

The body is either raw (any Content-Type: the client's type is ignored) or multipart/form-data
with the image in the field ``file``. Memory use is one network chunk, whatever the size.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from imagegate.errors import BadRequest, ClientClosed, InsufficientStorage, PayloadTooLarge

log = logging.getLogger("imagegate.uploader")
# The parser logs a warning of its own for each malformed body it meets; the client hears the
# reason in its 400 and the access log has the request, so one line per request is enough.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

FILE_FIELD = b"file"
MAX_PARTS = 16
MAX_BOUNDARY = 70  # RFC 2046


@dataclass(frozen=True)
class Received:
    """An upload on disk: its size and the sha256 of its bytes (the file part's, for
    multipart), computed as they were written: no second read."""

    size: int
    sha256: str


class _Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _HashingWriter:
    """Writes to a file and hashes what it writes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)


class _MultipartSink:
    """Feeds python-multipart and writes only the ``file`` part's data to ``out``."""

    def __init__(self, boundary: bytes, out: _Writer) -> None:
        self.out = out
        self.parts = 0
        self.found = False
        self.ended = False  # the closing boundary arrived: the body is not cut short
        self._writing = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_cb,
                "on_header_value": self._header_value_cb,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"multipart body has more than {MAX_PARTS} parts")
        self._headers = {}

    def _header_field_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        is_file = options.get(b"name") == FILE_FIELD
        if is_file and self.found:
            raise BadRequest("multipart body has more than one 'file' field")
        self._writing = is_file
        self.found = self.found or is_file

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writing:
            self.out.write(data[start:end])

    def _part_end(self) -> None:
        self._writing = False

    def _end(self) -> None:
        self.ended = True


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def declared_length(request: Request, max_bytes: int) -> int | None:
    """The body's Content-Length, if given; 413 at once when it is over ``max_bytes``."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return None  # the HTTP server rejects a malformed one before the app sees it
    if int(length) > max_bytes:
        raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
    return int(length)


async def receive_body(request: Request, dest: Path, max_bytes: int) -> Received:
    """Write the uploaded file to ``dest``; returns its size and sha256. Raises 400/413 on bad
    bodies, 499 when the client leaves, 507 when the disk is full (``dest`` may then hold a
    part: the caller removes it)."""
    declared_length(request, max_bytes)
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    try:
        return await _receive(request, dest, max_bytes, content_type, options)
    except ClientDisconnect as exc:
        raise ClientClosed("client closed the connection before the upload finished") from exc
    except FormParserError as exc:  # MultipartParseError and the parser's other complaints
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    except OSError as exc:
        if is_disk_full(exc):
            log.warning("upload refused: disk full while receiving (%s)", exc)
            raise InsufficientStorage() from exc
        raise


async def _receive(
    request: Request,
    dest: Path,
    max_bytes: int,
    content_type: bytes,
    options: dict[bytes, bytes],
) -> Received:
    received = 0
    # Plain writes: each is one network chunk into the page cache, cheaper than a thread hop.
    with open(dest, "wb") as file:  # noqa: ASYNC230
        out = _HashingWriter(file)
        sink = None
        if content_type == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise BadRequest("multipart/form-data without a boundary")
            if len(boundary) > MAX_BOUNDARY:
                raise BadRequest(f"multipart boundary over {MAX_BOUNDARY} characters")
            sink = _MultipartSink(boundary, out)
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
            if sink is None:
                out.write(chunk)
            else:
                sink.parser.write(chunk)
        if sink is not None:
            sink.parser.finalize()
            if not sink.found:
                raise BadRequest("multipart body has no 'file' field")
            if not sink.ended:
                raise BadRequest("malformed multipart body: no closing boundary")
    if out.size == 0:
        raise BadRequest("empty upload: send the image as the request body")
    return Received(out.size, out.hash.hexdigest())
