"""Sending stored images: ETag (the sha256), 304, Range, HEAD, cache and safety headers.

Bytes leave by the cheapest path the deployment has: for a local file up to
``SMALL_FILE_BYTES``, one answer from memory (a bounded cache of recently served files, or the
file read whole in one worker-thread call); for a larger one, Starlette's ``FileResponse``
(chunked reads, Range); with S3, an X-Accel-Redirect that lets NGINX fetch the object itself,
or, with no gateway, a stream through this process.

``ImageFastPath`` answers the common image request (a GET or HEAD the viewer may see, from
memory, no Range) below FastAPI's routing; everything else goes on to the routes. Embedded
mode served a 20 KB image at about 1,000 requests/s through ``FileResponse``: five
worker-thread hops per request (stat, open, two reads, close) and a task watching for the
client's disconnect. See docs/performance.md.
"""

from __future__ import annotations

import os
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread
from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from imagegate.db.changes import SqliteChanges, sqlite_changes
from imagegate.db.queries import image_for_viewer
from imagegate.db.reads import LoopThreadReader
from imagegate.deps import authenticate
from imagegate.errors import AppError
from imagegate.runtime import Runtime
from imagegate.security.apikeys import READ
from imagegate.storage.base import Storage
from imagegate.uploader.formats import is_image_name
from imagegate.variants import records as variant_records
from imagegate.variants.negotiate import choose_format
from imagegate.variants.records import object_name

PUBLIC_CACHE = "public, max-age=31536000, immutable"
PRIVATE_CACHE = "private, max-age=0, must-revalidate"
CSP = "default-src 'none'; sandbox"


class Servable(Protocol):
    """What sending a stored object needs: an image's record, or a variant's."""

    @property
    def name(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def public(self) -> bool: ...


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    tags = (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    return etag in tags


def _vet_range(request: Request, image: Servable, etag: str) -> None:
    """Decide a Range request before FileResponse sees it, which would answer its errors in
    plain text: a range past the end is a 416 in our JSON shape (with ``Content-Range: bytes
    */size``), and a malformed one is ignored, as RFC 9110 allows (the whole image, 200)."""
    value = request.headers.get("range")
    if value is None:
        return
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        # A different (or date) validator: the whole image, which never changes anyway.
        _drop_range(request)
        return
    verdict = _range_verdict(value, image.bytes)
    if verdict == "unsatisfiable":
        raise AppError(
            "requested range not satisfiable",
            status=416,
            headers={"Content-Range": f"bytes */{image.bytes}"},
        )
    if verdict == "ignore":
        _drop_range(request)


_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
MAX_RANGES = 100  # FileResponse's own limit: more are served whole


def _range_verdict(value: str, size: int) -> str:
    """``serve`` (every range is valid and satisfiable: FileResponse answers 206),
    ``unsatisfiable`` (valid, none within the image: 416), or ``ignore`` (malformed, too
    many, or a mix of satisfiable and not: the whole image)."""
    unit, sep, specs = value.partition("=")
    parts = [p.strip(" \t") for p in specs.split(",")]
    if not sep or unit.strip().lower() != "bytes" or len(parts) > MAX_RANGES:
        return "ignore"
    satisfiable = []
    for part in filter(None, parts):
        match = _RANGE_SPEC.fullmatch(part)
        if match is None or match.group(0) == "-":
            return "ignore"
        first, last = match.groups()
        try:
            if first and last and int(last) < int(first):
                return "ignore"
            satisfiable.append(int(first) < size if first else int(last) > 0)
        except ValueError:  # over Python's digit limit for int()
            return "ignore"
    if not satisfiable:
        return "ignore"
    if not any(satisfiable):
        return "unsatisfiable"
    return "serve" if all(satisfiable) else "ignore"


def _drop_range(request: Request) -> None:
    request.scope["headers"] = [
        (k, v) for k, v in request.scope["headers"] if k not in (b"range", b"if-range")
    ]


# --- local files from memory -------------------------------------------------------------

# Local files up to this size are answered from memory in one piece (and may be cached);
# larger ones are streamed by FileResponse in chunks.
SMALL_FILE_BYTES = 256 * 1024

# What identifies a file's current content without reading it: os.replace gives a new inode,
# and a write in place changes the size or the modification and change times.
FileKey = tuple[int, int, int, int, int]


def _file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class _Entry:
    key: FileKey
    data: bytes
    last_modified: bytes


class ServeCache:
    """The bytes of recently served small files, by image name, least recently used first out,
    at most ``max_bytes`` of them in all.

    It decides nothing about access: the record (visibility, owner) is read and checked on
    every request before the cache is asked, so a deleted or private image is never served from
    it. An entry is used only while the file's ``os.stat`` still matches the one it was read
    with, so a file replaced or rewritten (with another size or time) is read again. Used from
    the event loop's thread only."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, key: FileKey, *, count_miss: bool = True) -> _Entry | None:
        """The cached bytes of this file (``key``: its stat now), or None; ``count_miss``
        False for a look whose miss is counted by the read that follows it."""
        entry = self._entries.get(name)
        if entry is None or entry.key != key:
            if count_miss:
                self.misses += 1
            return None
        self._entries.move_to_end(name)
        self.hits += 1
        return entry

    def put(self, name: str, entry: _Entry) -> None:
        self.discard(name)
        size = len(entry.data)
        if size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= len(old.data)
            self.evictions += 1
        self._entries[name] = entry
        self.bytes += size

    def discard(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self.bytes -= len(entry.data)


class _CacheCollector(Collector):
    """The cache's counters at /metrics, read when scraped: nothing to update per request."""

    def __init__(self, cache: ServeCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        c = self.cache
        yield GaugeMetricFamily(
            "imagegate_serve_cache_bytes", "Image bytes held by the serving cache", c.bytes
        )
        yield GaugeMetricFamily(
            "imagegate_serve_cache_max_bytes", "The serving cache's bound", c.max_bytes
        )
        yield GaugeMetricFamily(
            "imagegate_serve_cache_entries", "Images held by the serving cache", len(c)
        )
        yield CounterMetricFamily(
            "imagegate_serve_cache_hits", "Small local images answered from the cache", c.hits
        )
        yield CounterMetricFamily(
            "imagegate_serve_cache_misses", "Small local images read from disk", c.misses
        )
        yield CounterMetricFamily(
            "imagegate_serve_cache_evictions", "Entries dropped for room", c.evictions
        )


# One cache per storage object (one per app): the routes and the fast path share it.
_CACHES: weakref.WeakKeyDictionary[Storage, ServeCache] = weakref.WeakKeyDictionary()


def serve_cache(runtime: Runtime) -> ServeCache | None:
    """The app's cache of small local files, made (and shown at /metrics) on first use; None
    when it is off (``serve_cache_mib`` 0) or the storage is not a local folder."""
    storage = runtime.storage
    cache = _CACHES.get(storage)
    if cache is None:
        size = runtime.settings.serve_cache_mib * 2**20
        if not size or storage.local_path("x") is None:
            return None
        cache = _CACHES[storage] = ServeCache(size)
        runtime.metrics.registry.register(_CacheCollector(cache))
    return cache


def _read_whole(path: str | Path) -> _Entry | None:
    """The file's bytes in one call (run in a worker thread): None when it is over
    ``SMALL_FILE_BYTES`` by now. Raises OSError (FileNotFoundError: gone)."""
    with open(path, "rb", buffering=0) as f:
        before = os.fstat(f.fileno())
        if before.st_size > SMALL_FILE_BYTES:
            return None
        data = f.readall()
        after = os.fstat(f.fileno())
    # Written to while read: served as read, but keyed so that it is never a cache hit.
    key = _file_key(before) if _file_key(after) == _file_key(before) else (0, 0, -1, 0, 0)
    return _Entry(key, data, formatdate(after.st_mtime, usegmt=True).encode())


def _stat_small(path: str | Path, name: str, cache: ServeCache | None) -> FileKey | None:
    """The file's key when it is a local file up to ``SMALL_FILE_BYTES``; None for a larger
    (or missing) one. The stat runs on the loop's thread, as the record read does: a few
    microseconds for a file in use, where each worker-thread hop cost more than the answer."""
    try:
        st = os.stat(path)
    except OSError:
        if cache is not None:
            cache.discard(name)
        return None
    return None if st.st_size > SMALL_FILE_BYTES else _file_key(st)


async def _small_file(path: str | Path, name: str, cache: ServeCache | None) -> _Entry | None:
    """A local file up to ``SMALL_FILE_BYTES`` as one piece, from the cache when the file is
    the one cached; None for a larger (or missing) file, which FileResponse then streams (or
    reports)."""
    key = _stat_small(path, name, cache)
    if key is None:
        return None
    if cache is not None:
        entry = cache.get(name, key)
        if entry is not None:
            return entry
    try:
        entry = await anyio.to_thread.run_sync(_read_whole, path)
    except OSError:
        return None
    if entry is not None and cache is not None and entry.key == key:
        cache.put(name, entry)
    return entry


def _headers(image: Servable, public_route: bool) -> dict[str, str]:
    return {
        "ETag": f'"{image.sha256}"',
        "Cache-Control": PUBLIC_CACHE if public_route else PRIVATE_CACHE,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CSP,
    }


async def image_response(
    request: Request,
    storage: Storage,
    image: Servable,
    *,
    public_route: bool,
    accel_prefix: str | None,
    cache: ServeCache | None = None,
) -> Response:
    """The image's bytes with the headers every image answer carries."""
    headers = _headers(image, public_route)
    etag = headers["ETag"]
    if _etag_matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    # Decided here for every path: storage behind the gateway would answer some unsatisfiable
    # ranges with the whole image.
    _vet_range(request, image, etag)
    path = storage.local_path(image.name)
    if path is not None:
        # (From the scope: ``request.headers`` was read before ``_vet_range`` may drop Range.)
        if not any(k == b"range" for k, _ in request.scope["headers"]):
            entry = await _small_file(path, image.name, cache)
            if entry is not None:
                head = request.method == "HEAD"
                headers["Accept-Ranges"] = "bytes"
                headers["Content-Length"] = str(len(entry.data))
                headers["Last-Modified"] = entry.last_modified.decode()
                return Response(
                    b"" if head else entry.data, media_type=image.content_type, headers=headers
                )
        # FileResponse streams in chunks and answers Range (206) and HEAD itself.
        return FileResponse(path, media_type=image.content_type, headers=headers)
    head = request.method == "HEAD"
    signed = storage.signed_path(image.name, public=image.public, head=head)
    if accel_prefix and signed:
        # NGINX fetches the object (Range and all) from storage; the sha256 rides in the path
        # so the gateway can send it as the ETag.
        accel = f"{accel_prefix.rstrip('/')}/{image.sha256}{signed}"
        return Response(
            media_type=image.content_type, headers={**headers, "X-Accel-Redirect": accel}
        )
    headers["Content-Length"] = str(image.bytes)
    if head:
        return Response(media_type=image.content_type, headers=headers)
    return StreamingResponse(
        storage.stream(image.name, public=image.public),
        media_type=image.content_type,
        headers=headers,
    )


# --- records ----------------------------------------------------------------------------

_T = TypeVar("_T")


class RecordCache:
    """The records (image or variant) the fast path found, so that a hot image costs no
    record read: the read was 17 µs of a 60 µs answer. Embedded mode (SQLite file) only.

    This process's writes are seen at once: every write holds a connection of the app's pool
    while it runs, and an entry counts only while no connection is checked out and none was
    checked out or in since it was read. A deletion or a visibility change made here is seen
    by the next request. Another process's writes (the CLI's ``user delete``, an operator's
    SQL): at most every ``look`` seconds ``PRAGMA data_version`` tells whether any other
    connection committed, and if so every entry is dropped; and no entry is used after ``ttl``
    seconds whatever the look says. (A look on every request would cost a third of the read
    it saves: each SQLite statement takes and drops a read lock, two ``fcntl`` calls.)
    Records the viewer may not see are not kept: the routes answer those. Used from the
    loop's thread."""

    def __init__(
        self,
        engine: AsyncEngine,
        changes: SqliteChanges,
        *,
        ttl: float = 1.0,
        look: float = 0.1,
        max_entries: int = 10_000,
    ) -> None:
        self.ttl = ttl
        self.look = look
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._engine = engine.sync_engine
        self._changes = changes
        self._looked = -look
        self._generation = 0
        self._entries: dict[Hashable, tuple[Any, int, float]] = {}
        # Pool events on the engine (not its pool): they follow the pool that dispose() makes.
        event.listen(self._engine, "checkout", self._bump)
        event.listen(self._engine, "checkin", self._bump)

    def _bump(self, *_: object) -> None:
        self._generation += 1

    def _current(self, now: float) -> int | None:
        """The generation a record read now belongs to; None when none may be cached now (a
        connection is checked out: a write of this process may be under way)."""
        if self._engine.pool.checkedout():  # type: ignore[attr-defined]  # (QueuePool's)
            return None
        if now - self._looked >= self.look:
            self._looked = now
            if self._changes.changed():
                self._generation += 1
        return self._generation

    def _hit(self, key: Hashable, generation: int | None, now: float) -> Any:
        if generation is not None:
            entry = self._entries.get(key)
            if entry is not None and entry[1] == generation and now - entry[2] < self.ttl:
                self.hits += 1
                return entry[0]
        return None

    def peek(self, key: Hashable) -> Any:
        """The record under ``key`` when it may be used from memory now, else None (nothing
        is read)."""
        now = time.monotonic()
        return self._hit(key, self._current(now), now)

    async def fetch(self, key: Hashable, read: Callable[[], Awaitable[_T | None]]) -> _T | None:
        """The record under ``key``, from memory when it may be, else ``read()``'s (kept when
        not None)."""
        now = time.monotonic()
        generation = self._current(now)
        value: _T | None = self._hit(key, generation, now)
        if value is not None:
            return value
        self.misses += 1
        found = await read()
        # Kept only if no connection was checked out or in meanwhile (the read may wait).
        if found is not None and generation is not None and self._current(now) == generation:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (found, generation, now)
        return found


class _RecordCollector(Collector):
    def __init__(self, cache: RecordCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "imagegate_serve_record_cache_hits",
            "Image answers whose record came from memory (embedded mode)",
            self.cache.hits,
        )
        yield CounterMetricFamily(
            "imagegate_serve_record_cache_misses",
            "Image answers whose record was read from the database (embedded mode)",
            self.cache.misses,
        )


def record_cache(runtime: Runtime) -> RecordCache | None:
    """A record cache for the fast path (shown at /metrics) when the records are in a SQLite
    file read on the loop's thread; None otherwise."""
    changes = sqlite_changes(runtime.settings.effective_database_url)
    pool = runtime.engine.sync_engine.pool
    if changes is None or not isinstance(runtime.reads, LoopThreadReader):
        return None
    if not hasattr(pool, "checkedout"):  # (a pool that cannot tell: no cache)
        return None
    cache = RecordCache(runtime.engine, changes)
    runtime.metrics.registry.register(_RecordCollector(cache))
    return cache


# --- the fast path -------------------------------------------------------------------------

# Requests with these headers go on to the routes: they vet and answer ranges, and a body
# (unusual on a GET) meets the app's body limit.
_PASS_ON = frozenset({b"range", b"content-length", b"transfer-encoding"})
_PUBLIC_CACHE = PUBLIC_CACHE.encode()
_PRIVATE_CACHE = PRIVATE_CACHE.encode()
_CSP = CSP.encode()


@dataclass(frozen=True, slots=True)
class _Ask:
    """What an image request asks, read from its path and headers."""

    public_route: bool
    preset: str  # "" for the original
    name: str
    template: str  # the route's path template
    if_none_match: bytes
    accept: bytes


def _ask(path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> _Ask | None:
    """The image (``/images/{name}``, ``/v1/user/{name}``) or preset variant
    (``.../{preset}/{name}``, no query: custom sizes and their checks are the routes') a
    request asks for; None when it is not one of those, or has a Range or a body."""
    if path.startswith("/images/"):
        prefix, public_route = "/images/", True
    elif path.startswith("/v1/user/"):
        prefix, public_route = "/v1/user/", False
    else:
        return None
    preset, _, name = path[len(prefix) :].rpartition("/")
    if not is_image_name(name) or "/" in preset or (preset and query):
        return None
    if_none_match = b""
    accept: list[bytes] = []
    for key, value in headers:
        if key in _PASS_ON:
            return None
        if key == b"if-none-match" and not if_none_match:
            if_none_match = value
        elif key == b"accept":
            accept.append(value)
    template = prefix + ("{preset}/{filename}" if preset else "{filename}")
    return _Ask(public_route, preset, name, template, if_none_match, b", ".join(accept))


def _common_headers(ask: _Ask, etag: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a 200 or 304 image answer (``image_response``'s)."""
    common = [
        (b"etag", etag),
        (b"cache-control", _PUBLIC_CACHE if ask.public_route else _PRIVATE_CACHE),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", _CSP),
    ]
    if ask.preset:
        common.append((b"vary", b"Accept"))
    return common


def _ok_headers(ask: _Ask, image: Servable, entry: _Entry) -> list[tuple[bytes, bytes]]:
    return [
        *_common_headers(ask, f'"{image.sha256}"'.encode()),
        (b"content-type", image.content_type.encode("latin-1")),
        (b"accept-ranges", b"bytes"),
        (b"content-length", b"%d" % len(entry.data)),
        (b"last-modified", entry.last_modified),
    ]


class ImageFastPath:
    """ASGI middleware: a GET or HEAD of an image (``/images/{name}``, ``/v1/user/{name}``)
    that the viewer may see, without Range, of a local file up to ``SMALL_FILE_BYTES``, is
    answered here (200 from memory, or 304); any other request, and any doubt (a bad name or
    token, no record, a Range, a larger or missing file, an error), goes on to the app, whose
    routes decide it as before. Same record read, same access rule, same headers as the
    routes (``image_response``); what it saves is FastAPI's routing, dependency solving and
    response objects: in process, a cached 20 KB image cost 120-130 µs of CPU through the
    route and 25 µs here (35 µs for the owner route, which checks the token too).

    It sits inside ``RequestContext``, which still gives the answer its request id, access
    log line and metrics (labelled with the route the request would have matched).
    ``answer_now`` answers the hottest case before any of that (see server.py)."""

    def __init__(self, runtime: Runtime) -> None:
        self.app: ASGIApp | None = None  # the app it passes requests on to (``wrap``)
        self.runtime = runtime
        folder = runtime.storage.local_path("")  # (the folder itself: Path("f") / "" is "f")
        self.enabled = "uploader" in runtime.roles and folder is not None
        # Paths as strings: pathlib's joining cost more than the stat.
        self._folder = f"{folder}/"
        self._routes: dict[tuple[str, str], Any] = {}
        self._cache = serve_cache(runtime) if self.enabled else None
        self._records = record_cache(runtime) if self.enabled else None
        self.answered_now = 0  # by ``answer_now``, shown at /metrics
        if self._cache is not None and self._records is not None:
            runtime.metrics.registry.register(_AnsweredNow(self))

    def wrap(self, app: ASGIApp) -> ImageFastPath:
        """This middleware around ``app`` (for ``RequestContext.outermost``)."""
        self.app = app
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "ImageFastPath.wrap() first"
        if (
            self.enabled
            and scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and not scope.get("root_path")
            and await self._answer(scope, send)
        ):
            return
        await self.app(scope, receive, send)

    def answer_now(
        self, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], bytes, str] | None:
        """A public GET (no query, no If-None-Match) answered from memory alone, or None:
        the record and the file's bytes must both be cached, and the file unchanged (one
        ``stat``); then the answer's headers, its body and the route's template. Nothing
        here waits: it runs in the connection's parser callback, before a request becomes
        an ASGI task. Anything else, a first request included (which fills the caches),
        goes through ``__call__``."""
        records, cache = self._records, self._cache
        if records is None or cache is None or not path.startswith("/images/"):
            return None
        ask = _ask(path, b"", headers)
        if ask is None or ask.if_none_match:
            return None
        image: Servable | None
        if ask.preset:
            stored = _variant_name(self.runtime, ask.preset, ask.name, ask.accept)
            image = None if stored is None else records.peek(("variant", stored))
            if image is not None and not image.public:
                return None
        else:
            image = records.peek(("image", ask.name, None))
        if image is None:
            return None
        key = _stat_small(self._folder + image.name, image.name, cache)
        # (A miss here is the app's to count: it reads the file next.)
        entry = None if key is None else cache.get(image.name, key, count_miss=False)
        if entry is None:
            return None
        self.answered_now += 1
        return _ok_headers(ask, image, entry), entry.data, ask.template

    async def _answer(self, scope: Scope, send: Send) -> bool:
        """True when the request was answered here; False (nothing sent) to pass it on."""
        ask = _ask(scope["path"], scope.get("query_string", b""), scope["headers"])
        if ask is None:
            return False
        route = self._route(scope, ask.template, scope["method"])
        if route is None:
            return False
        runtime = self.runtime
        try:
            owner_id = None
            if not ask.public_route:
                owner = await authenticate(Request(scope), account_check=True, scope=READ)
                owner_id = owner.user_id
            image: Servable | None
            if ask.preset:
                image = await _variant(
                    runtime, ask.preset, ask.name, ask.accept, owner_id, self._records
                )
            else:
                image = await self._image(ask.name, owner_id)
        except Exception:  # the routes meet the same failure and answer it
            return False
        if image is None:
            return False
        etag = f'"{image.sha256}"'
        if ask.if_none_match and _etag_matches(ask.if_none_match.decode("latin-1"), etag):
            scope["route"] = route  # for RequestContext's metrics and log
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": _common_headers(ask, etag.encode()),
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return True
        entry = await _small_file(self._folder + image.name, image.name, self._cache)
        if entry is None:
            return False
        scope["route"] = route
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _ok_headers(ask, image, entry),
            }
        )
        body = b"" if scope["method"] == "HEAD" else entry.data
        await send({"type": "http.response.body", "body": body})
        return True

    async def _image(self, name: str, owner_id: str | None) -> Servable | None:
        """The image if this viewer may see it (``image_for_viewer``, through the cache)."""

        def read() -> Awaitable[Servable | None]:
            return image_for_viewer(self.runtime.reads, name, owner_id=owner_id)

        if self._records is None:
            return await read()
        return await self._records.fetch(("image", name, owner_id), read)

    def _route(self, scope: Scope, template: str, method: str) -> Any:
        """The app's route for this path template and method (None: the app has none)."""
        route = self._routes.get((template, method))
        if route is None:
            app = scope.get("app")
            for candidate in getattr(app, "routes", ()):
                if getattr(candidate, "path", None) == template and method in (
                    getattr(candidate, "methods", None) or ()
                ):
                    route = self._routes[(template, method)] = candidate
                    break
        return route


class _AnsweredNow(Collector):
    def __init__(self, fast_path: ImageFastPath) -> None:
        self.fast_path = fast_path

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "imagegate_immediate_answers",
            "Cached public images the HTTP server answered before the app (server.py)",
            self.fast_path.answered_now,
        )


# ``choose_format``'s answers by (Accept, extension): a browser sends the same Accept on every
# image request, and parsing it cost 3-5 µs. Bounded: any client may send any Accept.
_FORMATS: dict[tuple[bytes, str], str] = {}
_FORMATS_MAX = 1024


def _format(accept: bytes, ext: str) -> str:
    key = (accept, ext)
    fmt = _FORMATS.get(key)
    if fmt is None:
        fmt = choose_format(accept.decode("latin-1"), ext)
        if len(_FORMATS) >= _FORMATS_MAX:
            _FORMATS.clear()
        _FORMATS[key] = fmt
    return fmt


def _variant_name(runtime: Runtime, preset: str, name: str, accept: bytes) -> str | None:
    """The stored name of the preset's variant in the format ``accept`` prefers (None: no
    such preset)."""
    if preset not in runtime.variants.presets:
        return None
    return object_name(name, preset, _format(accept, name.rsplit(".", 1)[1]))


async def _variant(
    runtime: Runtime,
    preset: str,
    name: str,
    accept: bytes,
    owner_id: str | None,
    records: RecordCache | None,
) -> Servable | None:
    """The preset's stored variant in the format ``accept`` prefers, if it is made and this
    viewer may see it (the route's rule); None passes the request on to the route."""
    stored = _variant_name(runtime, preset, name, accept)
    if stored is None:
        return None

    def read() -> Awaitable[variant_records.StoredVariant | None]:
        return variant_records.variant(runtime.reads, stored)

    found = await (read() if records is None else records.fetch(("variant", stored), read))
    if found is None or not (found.public if owner_id is None else found.owner_id == owner_id):
        return None
    return found
