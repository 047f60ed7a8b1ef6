"""The relay (``imagegate serve relay``): publishes the outbox to Kafka in commit order.

One relay publishes at a time: it holds a lease, a PostgreSQL session advisory lock taken on a
dedicated connection. The lock dies with that connection, so when the active relay dies (even
``kill -9``) PostgreSQL releases it at once and a standby, which retries every
``STANDBY_RETRY_SECONDS``, takes over. Every read and mark of the outbox runs on that same
connection: a relay that lost its connection has lost its lease and cannot mark anything.

Each batch: the oldest unpublished rows by ``seq`` — only those whose transaction is older
than every transaction still running (the snapshot's xmin; see ``SELECT_BATCH``) — are
produced with an idempotent producer (``acks=all``), keyed by the owner's id (one
user's events stay on one partition, in order); once every delivery report is in and all are
successes, the rows are marked published in one UPDATE. Any failed delivery: nothing is marked
and the batch is produced again after a pause; consumers' handlers are idempotent, so the
duplicates that can cause are harmless. Published rows are pruned after
``outbox_retention_seconds``.

An idle relay looks again when PostgreSQL notifies it that a commit added outbox rows (a
trigger, migration 0006), or after ``outbox_poll_seconds`` at the latest.

After each batch (and each look that found nothing), the relay also sends a heartbeat, at most
every ``account_feed_heartbeat_seconds``, to every partition of ``<prefix>.accounts``: the time
before which every committed event is in Kafka, which tells the replicas' account feeds how
complete their memory is (events/heartbeat.py, events/feed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from psycopg.rows import DictRow, dict_row
from sqlalchemy.engine import make_url

from imagegate.db.engine import is_sqlite
from imagegate.events.envelope import topic_of
from imagegate.events.heartbeat import Heartbeats, batch_head, with_head
from imagegate.events.kafka import BrokerProbe, producer_config
from imagegate.metrics import Metrics
from imagegate.settings import Settings

log = logging.getLogger("imagegate.events")

# The advisory lock key of the relay lease: "igrelay1" as a big-endian 64-bit integer.
LEASE_KEY = int.from_bytes(b"igrelay1", "big")
STANDBY_RETRY_SECONDS = 0.5
RECONNECT_SECONDS = 1.0
# After a failed batch the pause doubles from the first value up to the second.
RETRY_SECONDS = (0.5, 5.0)
PRUNE_EVERY_SECONDS = 60.0
PRUNE_CHUNK = 10_000
# Batches start at most this often when the outbox is nearly idle (see Relay._idle).
BATCH_GAP_SECONDS = 0.05
NOTIFY_CHANNEL = "imagegate_outbox"  # notified by a trigger on outbox_events (migration 0006)
# How often a delivery wait looks whether the process is stopping.
FLUSH_SLICE_SECONDS = 0.2
# CloudEvents' Kafka binding, structured mode: the whole envelope is the value.
HEADERS: list[tuple[str, str | bytes | None]] = [
    ("content-type", b"application/cloudevents+json; charset=UTF-8")
]

# The fence: a row is taken only once every transaction older than its own has ended (its
# txid is below the snapshot's xmin). A transaction that began earlier, and may hold a lower
# seq, but commits later is then not overtaken by the rows after it: they wait for it and go
# out together in seq order. (Nothing is ever skipped: rows are found by "published_at IS
# NULL", not by a seq cursor.) A transaction left open anywhere on the server holds the relay
# back: /metrics shows the outbox's oldest age growing, /healthz says degraded after a minute.
# "ORDER BY published_at, seq" is seq order here (published_at is NULL) and is the order of the
# (published_at, seq) index: the plan walks the unpublished rows only, never the published ones
# kept for the retention (ordering by seq alone let the planner walk the primary key).
SELECT_BATCH = """
SELECT seq, type, owner_id, payload FROM outbox_events
WHERE published_at IS NULL
  AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ORDER BY published_at, seq
LIMIT %s
"""
# The same, with what the heartbeats need (events/heartbeat.py).
SELECT_BATCH_WITH_HEAD = with_head(SELECT_BATCH)
MARK = "UPDATE outbox_events SET published_at = now() WHERE seq = ANY(%s::bigint[])"
PRUNE = """
DELETE FROM outbox_events WHERE seq IN (
  SELECT seq FROM outbox_events
  WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => %s)
  LIMIT %s
)
"""


class RelayUnavailable(RuntimeError):
    """The relay cannot run with these settings (it needs PostgreSQL)."""


def plain_dsn(url: str) -> str:
    """The database URL as libpq reads it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def check_relay_settings(settings: Settings) -> None:
    """Raise :class:`RelayUnavailable` when the relay cannot run with ``settings``."""
    if is_sqlite(settings.effective_database_url):
        raise RelayUnavailable(
            "the relay needs PostgreSQL (IMAGEGATE_DATABASE_URL=postgresql://...); "
            "embedded mode with SQLite dispatches events inline (IMAGEGATE_EVENTS=inline)"
        )


class _Deliveries:
    """Delivery reports of one batch, counted in the producer's callback thread."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.done = 0
        self.errors: list[KafkaError] = []
        self.by_topic: dict[str, int] = {}

    def report(self, err: KafkaError | None, msg: Message) -> None:
        self.done += 1
        if err is not None:
            self.errors.append(err)
        else:
            topic = msg.topic() or "?"
            self.by_topic[topic] = self.by_topic.get(topic, 0) + 1


class Relay:
    """The relay loop of one process: standby until it holds the lease, then publishes."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.probe = BrokerProbe(settings, "relay")
        self._producer: Producer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._halt = threading.Event()  # the same, for the delivery wait in a thread
        self._unroutable: set[int] = set()
        self.active = False
        self._heartbeats = Heartbeats(settings)  # for the replicas' account feed

    async def start(self) -> None:
        """Start the relay loop in the background (refuses SQLite)."""
        check_relay_settings(self.settings)
        self._producer = Producer(producer_config(self.settings, "relay"))
        self._task = asyncio.create_task(self._run(), name="imagegate-relay")

    async def stop(self) -> None:
        """Stop within the shutdown grace: a batch in flight is left unmarked (it is produced
        again by the next relay: harmless duplicates), and the lease is released."""
        self._stopping.set()
        self._halt.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.settings.shutdown_grace_seconds)
            except TimeoutError:
                log.warning("relay: did not stop within the grace; cancelled")
        if self._producer is not None:
            # Nothing waits for these any more; drop what is still queued.
            self._producer.purge()
            await asyncio.to_thread(self._producer.flush, 1.0)

    async def broker_reachable(self) -> bool:
        return await self.probe.reachable()

    # --- the loop ---------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _run(self) -> None:
        dsn = plain_dsn(self.settings.effective_database_url)
        refused = 0
        while not self._stopping.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    dsn,
                    autocommit=True,
                    connect_timeout=10,
                    row_factory=dict_row,
                    application_name="imagegate-relay",
                    # A silent network loss is noticed in about 20 s, not hours.
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=3,
                    keepalives_count=3,
                )
            except (OSError, psycopg.Error) as exc:
                refused += 1
                if refused in (1, 10) or refused % 100 == 0:
                    log.warning("relay: cannot connect to the database (%d): %s", refused, exc)
                await self._sleep(RECONNECT_SECONDS)
                continue
            refused = 0
            lost = False
            try:
                await self._lead(conn)
            except (OSError, psycopg.Error) as exc:
                log.warning("relay: database connection lost: %s", exc)
                lost = True
            finally:
                if self.active:
                    log.info("relay: lease released")
                self.active = False
                self.metrics.relay_active.set(0)
                # Closing the session releases the advisory lock.
                with contextlib.suppress(OSError, psycopg.Error, TimeoutError):
                    await asyncio.wait_for(conn.close(), 5)
            if lost:
                await self._sleep(RECONNECT_SECONDS)

    async def _lead(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        """Wait for the lease on ``conn``, then publish batches until stopped."""
        standby_logged = False
        while not self._stopping.is_set():
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (LEASE_KEY,))
            row = await cur.fetchone()
            if row is not None and row["got"]:
                break
            if not standby_logged:
                log.info("relay: another relay holds the lease; standing by")
                standby_logged = True
            await self._sleep(STANDBY_RETRY_SECONDS)
        else:
            return
        log.info("relay: holding the lease; publishing the outbox")
        # Commits that add outbox rows notify this channel (migration 0006): an idle relay
        # wakes at once rather than at its next poll.
        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self.active = True
        self.metrics.relay_active.set(1)
        next_prune = 0.0
        failures = 0
        batch_size = self.settings.outbox_batch_size
        while not self._stopping.is_set():
            if time.monotonic() >= next_prune:
                await self._prune(conn)
                next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            batch_started = time.monotonic()
            published = await self._batch(conn)
            if published is None:  # a delivery failed: pause, then the same rows again
                failures += 1
                pause = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                await self._sleep(pause)
                continue
            failures = 0
            if published < batch_size:  # caught up: look again when notified, or at the poll
                await self._idle(conn, batch_started)

    async def _idle(self, conn: psycopg.AsyncConnection[DictRow], batch_started: float) -> None:
        """Until a commit adds outbox rows (a notification, also one that came during the
        last batch) or the poll interval passes; then at least until ``BATCH_GAP_SECONDS``
        after the last batch started, so that a stream of single events goes out in batches
        rather than one produce request and one UPDATE per event."""
        # Run to its end, not broken out of: it first yields every notification psycopg queued
        # during the last batch (a break would leave the rest queued, one wake-up each).
        async for _ in conn.notifies(timeout=self.settings.outbox_poll_seconds, stop_after=1):
            pass
        gap = BATCH_GAP_SECONDS - (time.monotonic() - batch_started)
        if gap > 0:
            await self._sleep(gap)

    async def _batch(self, conn: psycopg.AsyncConnection[DictRow]) -> int | None:
        """Publish one batch: the number of rows taken, or None when a delivery failed (or
        the relay is stopping) and nothing was marked."""
        started = time.perf_counter()
        size = self.settings.outbox_batch_size
        cur = await conn.execute(SELECT_BATCH_WITH_HEAD, (size + 1, size))
        snapshot_at, unpublished, rows = batch_head(await cur.fetchall())
        if not rows:
            await self._heartbeats.after_batch(self._producer, snapshot_at, unpublished, ())
            return 0
        self.metrics.relay_in_flight.set(len(rows))
        try:
            deliveries = await asyncio.to_thread(self._produce, rows)
        finally:
            self.metrics.relay_in_flight.set(0)
        if deliveries is None:
            return None
        if deliveries.errors:
            log.warning(
                "relay: %d of %d deliveries failed (%s); the batch will be produced again",
                len(deliveries.errors),
                len(rows),
                deliveries.errors[0].str(),
            )
            return None
        seqs = [row["seq"] for row in rows if row["seq"] not in self._unroutable]
        await conn.execute(MARK, (seqs,))
        for topic, count in deliveries.by_topic.items():
            self.metrics.events_published.labels(topic).inc(count)
        self.metrics.relay_batch_seconds.observe(time.perf_counter() - started)
        await self._heartbeats.after_batch(
            self._producer, snapshot_at, unpublished, [row["seq"] for row in rows]
        )
        return len(rows)

    def _produce(self, rows: Sequence[DictRow]) -> _Deliveries | None:
        """Produce ``rows`` and wait for every delivery report (in a worker thread)."""
        producer = self._producer
        assert producer is not None
        prefix = self.settings.kafka_topic_prefix
        deliveries = _Deliveries(len(rows))
        for row in rows:
            try:
                topic = topic_of(row["type"], prefix)
            except ValueError:
                if row["seq"] not in self._unroutable:
                    log.error(
                        "relay: outbox row %d has an unknown type %r", row["seq"], row["type"]
                    )
                    self._unroutable.add(row["seq"])
                deliveries.expected -= 1
                continue
            while True:
                try:
                    producer.produce(
                        topic,
                        value=row["payload"].encode(),
                        key=row["owner_id"].encode(),
                        headers=HEADERS,
                        on_delivery=deliveries.report,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
        while deliveries.done < deliveries.expected:
            if self._halt.is_set():
                return None
            producer.flush(FLUSH_SLICE_SECONDS)
        return deliveries

    async def _prune(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        retention = float(self.settings.outbox_retention_seconds)
        while not self._stopping.is_set():
            cur = await conn.execute(PRUNE, (retention, PRUNE_CHUNK))
            removed = cur.rowcount
            if removed:
                log.info("relay: pruned %d published outbox rows", removed)
            if removed < PRUNE_CHUNK:
                return
