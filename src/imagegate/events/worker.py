"""The worker (``imagegate serve worker``): a Kafka consumer group running the event handlers.

Offsets are committed only for messages whose handlers returned (``enable.auto.commit`` and
the automatic offset store are off; the worker commits the next offset of each partition it
has handled, every ``COMMIT_EVERY_SECONDS`` while events flow and as soon as they stop).
A fetch's partitions are handled side by side, each in order. A handler that raises is
retried with backoff (``RETRY_SECONDS``) in place, nothing past it committed, so the
partition's later messages — the same user's later events — wait behind it. A message that
is not an event at all (cannot be parsed) can never succeed: it is logged once, counted in
``imagegate_events_poison_total`` and committed past. On a rebalance the revoked partitions'
handled offsets are committed before they are given up; nothing unhandled is ever committed.
confluent-kafka's Consumer blocks, so every call on it runs in one dedicated thread, and the
handlers run on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from imagegate.events.envelope import Event
from imagegate.events.feed import is_heartbeat
from imagegate.events.handlers import HandlerContext, Handlers, dispatch
from imagegate.events.kafka import BrokerProbe, consumer_config, topics

log = logging.getLogger("imagegate.events")

POLL_SECONDS = 0.5
FETCH_MAX = 500
# A failing handler is tried again after the first value, doubling up to the second.
RETRY_SECONDS = (0.5, 30.0)
# What stop() keeps of the shutdown grace for committing and leaving the group.
CLOSE_RESERVE_SECONDS = 3.0
# Handled offsets are committed at least this often while events flow, and at once after a
# fetch without events.
COMMIT_EVERY_SECONDS = 0.2
LOGGED = (1, 10, 100)  # which of a run of broker errors are logged
T = TypeVar("T")


def after_rebalance(
    messages: list[Message], revoked: set[tuple[str, int]], owned: set[tuple[str, int]]
) -> list[Message]:
    """The messages of one fetch during which partitions were revoked (``revoked``) that are
    still this worker's to handle.

    A rebalance runs inside the poll, and the poll goes on after it: a partition revoked and
    given back (round-robin takes every partition back at each rebalance) has messages fetched
    before the revocation and the same ones again, fetched from the committed offset after it.
    Those of a partition now someone else's are dropped (its new owner handles them from the
    committed offset); of one still ours, each offset is kept once, in order — the consumer's
    position is past them, so dropping them all would lose them.
    """
    kept: list[Message] = []
    next_offset: dict[tuple[str, int], int] = {}
    for msg in messages:
        key = (msg.topic() or "", msg.partition() or 0)
        if msg.error() is None and key in revoked:
            offset = msg.offset() or 0
            if key not in owned or offset < next_offset.get(key, 0):
                continue
            next_offset[key] = offset + 1
        kept.append(msg)
    return kept


class _Stopping(Exception):
    """The worker is stopping while a message is still unhandled: leave it uncommitted."""


class KafkaWorker:
    """Consumes <prefix>.accounts and <prefix>.images and dispatches each event."""

    def __init__(self, ctx: HandlerContext, *, handlers: Handlers | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.handlers = handlers
        self.probe = BrokerProbe(self.settings, "worker")
        # Every consumer call from one thread: the Consumer must not be polled and closed (or
        # polled twice) at once.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imagegate-consumer")
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Next offset to commit per (topic, partition): handled, not yet committed.
        self._pending: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()  # _pending is touched by rebalance callbacks too
        # Partitions revoked during the current fetch (see after_rebalance).
        self._revoked: set[tuple[str, int]] = set()
        self._broker_errors = 0  # in a row (the LOGGED ones are logged)
        self._committed_at = 0.0  # time.monotonic() of the last commit

    async def start(self) -> None:
        """Join the group and consume in the background."""
        consumer = Consumer(consumer_config(self.settings, "worker"))
        self._consumer = consumer
        await self._call(
            consumer.subscribe,
            list(topics(self.settings)),
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._task = asyncio.create_task(self._run(), name="imagegate-worker")

    async def stop(self) -> None:
        """Finish the message in hand, commit, leave the group: within the shutdown grace."""
        self._stopping.set()
        grace = self.settings.shutdown_grace_seconds
        if self._task is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._task), max(0.5, grace - CLOSE_RESERVE_SECONDS)
                )
            except TimeoutError:
                log.warning("worker: a handler did not finish within the grace; cancelled")
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._commit()
            try:
                await asyncio.wait_for(self._call(self._consumer.close), CLOSE_RESERVE_SECONDS)
            except (TimeoutError, KafkaException, RuntimeError) as exc:
                log.warning("worker: leaving the group: %s", exc)
        self._thread.shutdown(wait=False)

    async def broker_reachable(self) -> bool:
        return await self.probe.reachable()

    # --- the loop ---------------------------------------------------------------------

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    def _fetch(self) -> list[Message]:
        """Wait up to POLL_SECONDS for a message, then take what else is already there."""
        consumer = self._consumer
        assert consumer is not None
        self._revoked.clear()
        first = consumer.poll(POLL_SECONDS)
        if first is None:
            return []
        messages = [first, *consumer.consume(FETCH_MAX - 1, 0)]
        if not self._revoked:
            return messages
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        return after_rebalance(messages, self._revoked, owned)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                messages: list[Message] = await self._call(self._fetch)
            except KafkaException as exc:  # fatal consumer errors surface here
                log.error("worker: consumer failed: %s", exc)
                await self._sleep(RETRY_SECONDS[0])
                continue
            # Partitions are handled side by side, each in order: one user's events stay in
            # order, and one slow handler (a large account's purge) holds only its partition
            # back for this fetch, not the events of every other user.
            by_partition: dict[tuple[str, int], list[Message]] = {}
            for msg in messages:
                err = msg.error()
                self._broker_errors = 0 if err is None else self._broker_errors + 1
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and self._broker_errors in LOGGED:
                        log.warning("worker: %s", err.str())
                    continue
                key = (msg.topic() or "", msg.partition() or 0)
                by_partition.setdefault(key, []).append(msg)
            await asyncio.gather(*(self._partition(k, m) for k, m in by_partition.items()))
            # Not after every fetch while events flow: each commit is a replicated write on
            # the brokers, and a steady stream makes many small fetches. What is handled but
            # not yet committed when the worker dies is handled again (handlers are
            # idempotent). A quiet fetch (nothing, or only the relay's heartbeats) commits.
            events = any(not m.error() and not is_heartbeat(m.headers()) for m in messages)
            if not events or time.monotonic() - self._committed_at >= COMMIT_EVERY_SECONDS:
                await self._commit()

    async def _partition(self, key: tuple[str, int], messages: list[Message]) -> None:
        """Handle one partition's fetched messages in order, marking each one done."""
        for msg in messages:
            try:
                await self._handle(msg)
            except _Stopping:
                return
            with self._lock:
                self._pending[key] = (msg.offset() or 0) + 1
            if self._stopping.is_set():
                return  # the message in hand is done; the rest is redelivered

    async def _handle(self, msg: Message) -> None:
        """Dispatch one message until its handlers succeed (or skip it if it is no event)."""
        if is_heartbeat(msg.headers()):  # the relay's, for the replicas' feed: not an event
            return
        try:
            event = Event.from_json(msg.value() or b"")
        except ValueError as exc:
            topic = msg.topic() or "?"
            log.error(
                "worker: %s[%s]@%s is not an event (%s); skipped",
                topic,
                msg.partition(),
                msg.offset(),
                exc,
            )
            self.ctx.metrics.events_poison.labels(topic).inc()
            return
        failures = 0
        while True:
            try:
                await dispatch(event, self.ctx, self.handlers)
                return
            except Exception as exc:  # a handler's failure means "not done": try again
                failures += 1
                pause = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                log.warning(
                    "worker: %s %s failed (attempt %d), retried in %.1f s: %s",
                    event.type,
                    event.id,
                    failures,
                    pause,
                    exc,
                )
                await self._commit()  # keep what was handled before it
                if await self._sleep(pause):
                    raise _Stopping from exc

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the worker is stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # --- offsets ----------------------------------------------------------------------

    def _take_pending(self, only: Sequence[TopicPartition] | None = None) -> list[TopicPartition]:
        with self._lock:
            keys = (
                list(self._pending)
                if only is None
                else [
                    (p.topic, p.partition) for p in only if (p.topic, p.partition) in self._pending
                ]
            )
            return [TopicPartition(t, p, self._pending.pop((t, p))) for t, p in keys]

    def _commit_now(self, offsets: list[TopicPartition], *, keep: bool = True) -> None:
        """Commit ``offsets`` synchronously (in the consumer thread); if that failed and
        ``keep``, put them back so that the next commit tries again."""
        consumer = self._consumer
        if not offsets or consumer is None:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("worker: offset commit failed: %s", exc)
            if not keep:
                return
            with self._lock:
                for tp in offsets:
                    key = (tp.topic, tp.partition)
                    self._pending[key] = max(self._pending.get(key, 0), tp.offset)

    async def _commit(self) -> None:
        self._committed_at = time.monotonic()
        offsets = self._take_pending()
        if offsets:
            await self._call(self._commit_now, offsets)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs inside poll, in the consumer thread, between two messages: every offset pending
        # here belongs to a handled message. Commit them before the partitions move; if that
        # fails they are not retried later (a late commit could rewind the new owner), and
        # the new owner handles them again (handlers are idempotent).
        self._revoked.update((p.topic, p.partition) for p in partitions)
        self._commit_now(self._take_pending(partitions), keep=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else owns them already: a commit would be refused; they redo from the last
        # committed offset (handlers are idempotent).
        self._revoked.update((p.topic, p.partition) for p in partitions)
        self._take_pending(partitions)
        log.warning("worker: lost %d partitions (session timeout)", len(partitions))
