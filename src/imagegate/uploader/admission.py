"""Who may upload now, and whose upload gets the next codec worker.

Admission happens before a byte of the body is read: an upload takes a place (global and per
account) or gets 503 at once, so a full server never reads a body it will refuse. A place is
held while the body arrives, while it waits for a worker and while it is processed.

Workers go to waiting uploads fairly, not first come first served: the account with the fewest
uploads being processed goes first, then the one served longest ago, then the oldest upload.
No account is ever given more than ``account_workers`` workers, so with ``account_workers <
workers`` another account's upload gets a worker as soon as one frees, however many uploads a
flooder has queued.

Single-threaded by design: every method runs on the event loop, so plain counters need no lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType

from prometheus_client import CollectorRegistry, Gauge

from imagegate.errors import Unavailable
from imagegate.settings import Settings

log = logging.getLogger("imagegate.uploader")

RETRY_AFTER_SECONDS = 2


@dataclass
class _Account:
    admitted: int = 0  # places held: receiving, waiting for a worker, or processing
    running: int = 0  # workers held
    last_grant: int = -1  # when it last got a worker (grant counter); -1: never
    waiting: deque[tuple[int, asyncio.Future[None]]] = field(default_factory=deque)


class Admission:
    """Places for uploads (``workers + queue`` in all, ``account_workers + account_queue`` per
    account) and the fair hand-out of the ``workers`` codec workers."""

    def __init__(
        self,
        workers: int,
        queue: int,
        account_workers: int,
        account_queue: int,
        listener: Callable[[int], None] | None = None,
    ) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self.account_workers = min(account_workers, workers)
        self.account_capacity = self.account_workers + account_queue
        self._accounts: dict[str, _Account] = {}
        self._admitted = 0
        self._waiting = 0
        self._running = 0
        self._seq = 0
        self._grants = 0
        self._listener = listener  # told the places held after every change

    @classmethod
    def from_settings(
        cls,
        s: Settings,
        registry: CollectorRegistry | None = None,
        listener: Callable[[int], None] | None = None,
    ) -> Admission:
        """The limits ``s`` describes (``codec_account_workers`` defaults to half the workers,
        at least 1), with its gauges in ``registry`` when given; ``listener`` is told the
        number of places held after every change (variants/yielding.py)."""
        account_workers = s.codec_account_workers or max(1, s.codec_workers // 2)
        admission = cls(
            s.codec_workers, s.codec_queue, account_workers, s.codec_account_queue, listener
        )
        if registry is not None:
            admission.register_gauges(registry)
        return admission

    def register_gauges(self, registry: CollectorRegistry) -> None:
        """Expose the counters at /metrics (read when scraped: nothing to keep up to date)."""
        gauges = (
            (
                "imagegate_uploads_admitted",
                "Uploads holding a place: receiving, waiting, processing or storing",
                lambda: self._admitted,
            ),
            (
                "imagegate_uploads_waiting",
                "Uploads received and waiting for a codec worker",
                lambda: self._waiting,
            ),
            (
                "imagegate_codec_workers_busy",
                "Codec workers processing an upload",
                lambda: self._running,
            ),
        )
        for name, doc, read in gauges:
            Gauge(name, doc, registry=registry).set_function(read)

    @property
    def admitted(self) -> int:
        """Uploads holding a place now."""
        return self._admitted

    @property
    def waiting(self) -> int:
        """Uploads received and waiting for a codec worker now."""
        return self._waiting

    @property
    def running(self) -> int:
        """Uploads holding a codec worker now."""
        return self._running

    def admit(self, account: str) -> Ticket:
        """A place for one upload of ``account``, or 503 + Retry-After when there is none."""
        acct = self._accounts.get(account)
        if self._admitted >= self.capacity:
            raise Unavailable(
                "image processing is at capacity; retry shortly", retry_after=RETRY_AFTER_SECONDS
            )
        if acct is not None and acct.admitted >= self.account_capacity:
            raise Unavailable(
                f"this account already has {acct.admitted} uploads in progress; "
                "retry when one finishes",
                retry_after=RETRY_AFTER_SECONDS,
            )
        if acct is None:
            acct = self._accounts[account] = _Account()
        acct.admitted += 1
        self._admitted += 1
        self._tell()
        return Ticket(self, account)

    def _leave(self, account: str) -> None:
        acct = self._accounts[account]
        acct.admitted -= 1
        self._admitted -= 1
        if acct.admitted == 0:
            del self._accounts[account]
        self._tell()

    def _tell(self) -> None:
        if self._listener is not None:
            # Never lets an upload fail or a place leak: the listener only tunes other work.
            try:
                self._listener(self._admitted)
            except Exception:
                log.exception("upload admission: the listener failed")

    @asynccontextmanager
    async def _worker(self, account: str) -> AsyncIterator[None]:
        acct = self._accounts[account]
        self._seq += 1
        entry = (self._seq, asyncio.get_running_loop().create_future())
        acct.waiting.append(entry)
        self._waiting += 1
        self._dispatch()
        try:
            await entry[1]
        except BaseException:
            # Cancelled while waiting (the client left): give back a worker granted in the
            # meantime, or leave the line.
            if entry[1].done() and not entry[1].cancelled():
                self._free(acct)
            elif entry in acct.waiting:
                acct.waiting.remove(entry)
                self._waiting -= 1
            raise
        try:
            yield
        finally:
            self._free(acct)

    def _free(self, acct: _Account) -> None:
        acct.running -= 1
        self._running -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free workers to the fairest waiting uploads."""
        while self._running < self.workers:
            best: _Account | None = None
            best_key = (0, 0, 0)
            # Accounts holding a place number at most ``capacity``: a short scan.
            for acct in self._accounts.values():
                if acct.waiting and acct.running < self.account_workers:
                    key = (acct.running, acct.last_grant, acct.waiting[0][0])
                    if best is None or key < best_key:
                        best, best_key = acct, key
            if best is None:
                return
            _, future = best.waiting.popleft()
            self._waiting -= 1
            if future.done():
                continue  # its task was cancelled and has not run yet to leave the line
            future.set_result(None)
            best.running += 1
            self._running += 1
            self._grants += 1
            best.last_grant = self._grants


class Ticket:
    """One upload's place; release it with ``with`` (every path, exceptions included)."""

    def __init__(self, admission: Admission, account: str) -> None:
        self._admission = admission
        self._account = account
        self._released = False

    def worker(self) -> AbstractAsyncContextManager[None]:
        """Wait for a codec worker (fairly, see the module doc) and hold it inside the block."""
        return self._admission._worker(self._account)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._leave(self._account)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
