"""Embedded mode's dispatcher: the outbox drained in-process, through the same handlers the
Kafka worker runs.

Rows are taken in ``seq`` order and each is marked published only after all its handlers
returned, so a process killed mid-dispatch leaves the row unpublished and the next start
handles it again (handlers are idempotent). A failing event is retried with exponential
backoff (0.5 s doubling to 60 s); meanwhile that owner's later events wait (per-user order
holds) while other owners' events go on. On PostgreSQL only the holder of an advisory-lock
lease dispatches, so two processes never handle the same row at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagegate.db.changes import sqlite_changes
from imagegate.events import outbox
from imagegate.events.handlers import HandlerContext, Handlers, dispatch

log = logging.getLogger("imagegate.events")

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 60.0
PRUNE_EVERY_SECONDS = 60.0
LEASE_CHECK_SECONDS = 5.0
# pg_try_advisory_lock key of the inline dispatcher's lease (the migrations use 0x1D4A6E).
INLINE_LEASE_KEY = 0x1D4A70


class PgLease:
    """A PostgreSQL session advisory lock held on a connection of its own: whoever holds it
    is the one active dispatcher; the others stand by and try again every few seconds.
    Losing the connection loses the lock (PostgreSQL releases it), and the next check
    notices."""

    def __init__(self, engine: AsyncEngine, key: int) -> None:
        self.engine = engine
        self.key = key
        self._conn: AsyncConnection | None = None
        self._held = False
        self._checked = -LEASE_CHECK_SECONDS

    async def held(self) -> bool:
        """True while this process holds the lease; tries to take it (at most every
        LEASE_CHECK_SECONDS) when it does not, and checks its connection as often."""
        now = time.monotonic()
        if now - self._checked < LEASE_CHECK_SECONDS:
            return self._held
        self._checked = now
        try:
            if self._conn is None:
                self._conn = await self.engine.connect()
            if self._held:
                await self._conn.execute(text("SELECT 1"))
            else:
                self._held = bool(
                    await self._conn.scalar(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}
                    )
                )
                if self._held:
                    log.info("events: this process dispatches the outbox (lease %#x)", self.key)
            await self._conn.commit()  # the lock is the session's: no transaction left open
        except Exception as exc:
            if self._held:
                log.warning("events: lost the dispatcher lease (%s)", exc)
            await self.release()
        return self._held

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        held, self._held = self._held, False
        if conn is None:
            return
        if held:
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                await conn.commit()
        with contextlib.suppress(Exception):
            await conn.close()


@dataclass
class _Retry:
    attempts: int
    at: float  # monotonic time of the next attempt


class InlineDispatcher:
    """Drains the outbox in this process: ``start()`` runs it in the background, ``wake()``
    makes it look at once (a local commit emitted an event), ``stop()`` ends it."""

    def __init__(
        self,
        ctx: HandlerContext,
        engine: AsyncEngine,
        *,
        handlers: Handlers | None = None,
    ) -> None:
        self.ctx = ctx
        self.handlers = handlers
        s = ctx.settings
        self.poll_seconds = s.outbox_poll_seconds
        self.batch_size = s.outbox_batch_size
        self.retention_seconds = s.outbox_retention_seconds
        self.lease = (
            PgLease(engine, INLINE_LEASE_KEY) if engine.dialect.name == "postgresql" else None
        )
        # SQLite: the outbox is read when something was committed, a retry is due, or this
        # process woke the dispatcher. An idle dispatcher polled it through aiosqlite every
        # 50 ms: about 1.5 ms of CPU a poll in worker-thread hops, 3 % of a core doing nothing;
        # a look at ``PRAGMA data_version`` costs a few microseconds on the loop's thread.
        self.changes = sqlite_changes(str(engine.url))
        self._wakeup = asyncio.Event()
        self._retries: dict[str, _Retry] = {}
        self._task: asyncio.Task[None] | None = None
        self._pruned = 0.0

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="imagegate-inline-dispatcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.lease is not None:
            await self.lease.release()
        if self.changes is not None:
            self.changes.close()

    def _due(self, woken: bool) -> bool:
        """Whether to read the outbox now: always without a change detector; with one (SQLite),
        when woken by this process's commit, a retry is due, or any connection committed since
        the last look. The look comes before the read, so a commit after it shows at the next."""
        if self.changes is None:
            return True
        changed = self.changes.changed()  # asked every time: the read below sees that version
        now = time.monotonic()
        return changed or woken or any(r.at <= now for r in self._retries.values())

    async def _run(self) -> None:
        failures = 0
        again = False  # read at the next turn whatever the look says
        while True:
            woken, again = again or self._wakeup.is_set(), False
            self._wakeup.clear()
            try:
                if not self._due(woken):
                    await self._maybe_prune()
                elif self.lease is None or await self.lease.held():
                    handled = await self.run_once()
                    await self._maybe_prune()
                    failures = 0
                    if handled >= self.batch_size:
                        again = True
                        continue  # more may be waiting
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: keep trying, quietly
                failures += 1
                again = True
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("events: dispatcher cannot read the outbox (%s)", exc)
                await asyncio.sleep(min(5.0, self.poll_seconds * 2**failures))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_seconds)

    async def run_once(self) -> int:
        """Handle one batch of unpublished rows; returns how many were looked at."""
        now = time.monotonic()
        waiting = {owner for owner, r in self._retries.items() if r.at > now}
        async with self.ctx.sessions() as session:
            rows = await outbox.pending(session, self.batch_size, skip_owners=waiting)
        failed: set[str] = set()
        for row in rows:
            if row.owner_id in failed:
                continue  # this owner's earlier event failed: keep its order
            try:
                event = row.event()
            except ValueError as exc:  # cannot happen for rows we wrote; never retry it
                log.error("events: outbox row %d is not an event (%s); skipped", row.seq, exc)
                await self._mark(row.seq)
                continue
            try:
                await dispatch(event, self.ctx, self.handlers)
            except Exception as exc:
                failed.add(row.owner_id)
                self._schedule_retry(row.owner_id, event.type, event.id, exc)
                continue
            self._retries.pop(row.owner_id, None)
            await self._mark(row.seq)
        return len(rows)

    async def _mark(self, seq: int) -> None:
        async with self.ctx.sessions() as session:
            await outbox.mark_published(session, [seq])
            await session.commit()

    def _schedule_retry(self, owner: str, type: str, event_id: str, exc: Exception) -> None:
        previous = self._retries.get(owner)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (attempts - 1))
        self._retries[owner] = _Retry(attempts, time.monotonic() + delay)
        log.warning(
            "events: %s %s failed (attempt %d), retried in %.1f s: %s",
            type,
            event_id,
            attempts,
            delay,
            exc,
        )

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY_SECONDS:
            return
        self._pruned = now
        async with self.ctx.sessions() as session:
            removed = await outbox.prune(session, self.retention_seconds)
            await session.commit()
        if removed:
            log.info("events: pruned %d published outbox rows", removed)
