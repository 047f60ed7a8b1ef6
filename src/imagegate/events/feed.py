"""The account feed: each security and uploader replica keeps every account's existence in
memory, fed by ``<prefix>.accounts`` on Kafka (``events=kafka``), so that checking a token's
account costs no database read.

How a replica knows its memory is complete (the watermark):

- The relay, after its batches, sends a *heartbeat* to every partition of
  ``<prefix>.accounts`` (at most every ``account_feed_heartbeat_seconds``): a message with the
  Kafka header ``imagegate-heartbeat`` whose value is a time ``s`` (Unix seconds, ASCII decimal)
  and an empty value, sent once every event committed before ``s`` has been acknowledged by the
  cluster, so such events sit before the heartbeat in their partitions (how ``s`` is found:
  events/heartbeat.py). Consumers of the topic other than this feed skip messages with that
  header.
- A replica's watermark ``W`` is the minimum over the partitions of the last heartbeat time it
  consumed: every account change committed before ``W`` is in its memory. While
  ``now - W <= account_feed_max_lag_seconds`` the memory answers; otherwise (relay or cluster
  down, the replica behind) the database does, counted in
  ``imagegate_account_feed_fallbacks_total``. So an account deleted at time ``c`` is refused on
  every replica from ``c + max_lag`` on at the latest (with clocks in sync); in practice as soon
  as its event arrives (the relay's poll interval plus a few milliseconds).

Sessions ride the same feed: ``account.sessions_revoked`` (logout, a password change, a reused
refresh token; security/sessions.py) lists the ended sessions, whose access tokens (claim
``sid``) are then refused from memory, and may carry a cut-off (``tokens_valid_after``) for the
account's tokens without a session. Sessions that were never revoked need no event: a token's
session is accepted unless the memory knows it ended.

Start (and after anything that may have lost events, such as an offset out of range): note the
end offset of every partition, load every account and the recent revocations (those whose
access tokens could still be valid) from the database, then consume from the noted offsets;
events replayed over the load are harmless (adding an existing account, deleting a missing one,
revoking a revoked session). A deleted id is remembered for a token's lifetime plus the leeway,
so a late duplicate of its ``account.created`` (a relay fail-over can publish a batch twice)
cannot bring it back, and a token of an account deleted longer ago has expired anyway.

confluent-kafka's Consumer blocks: it is polled in one thread of its own, which is the only
writer of the in-memory state; request handlers on the event loop only read it (single dict
operations, atomic under the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from imagegate.events.envelope import Event, EventType
from imagegate.security.tokens import Identity
from imagegate.settings import Settings

log = logging.getLogger("imagegate.events")

# The Kafka header that marks a heartbeat (see the module docstring). Not an event: consumers
# of the topics skip every message that carries it.
HEARTBEAT_HEADER = "imagegate-heartbeat"
# The reader's ACL allows consumer groups with this prefix; the feed commits nothing.
GROUP_PREFIX = "imagegate-replica-"
POLL_SECONDS = 0.1
FETCH_MAX = 500
SYNC_TIMEOUT_SECONDS = 10.0
RETRY_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 60.0


Headers = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None


def heartbeat_time(headers: Headers) -> float | None:
    """The time a heartbeat carries, or None when the message is not a heartbeat."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if name == HEARTBEAT_HEADER:
            raw = value.decode() if isinstance(value, bytes) else (value or "")
            try:
                at = float(raw)
            except ValueError:
                return -math.inf  # a heartbeat, but unreadable: it proves nothing
            return at if math.isfinite(at) else -math.inf
    return None


def is_heartbeat(headers: Headers) -> bool:
    """True for a relay heartbeat (not an event: skip it)."""
    return heartbeat_time(headers) is not None


def encode_heartbeat(at: float) -> list[tuple[str, bytes]]:
    """The headers of a heartbeat for snapshot time ``at``."""
    return [(HEARTBEAT_HEADER, f"{at:.6f}".encode())]


class AccountState:
    """The accounts a replica knows of, the recently deleted ids, and the watermark.

    Written by one thread (the feed's); read from the event loop. Kept apart from Kafka so that
    it can be tested without a broker.
    """

    def __init__(self, deleted_ttl_seconds: float) -> None:
        self.deleted_ttl = deleted_ttl_seconds
        # The ids of the accounts that exist: all a token check needs (GET /v1/user's usage
        # comes from the database, see security/directory.py).
        self.accounts: set[str] = set()
        # Deleted id -> when it may be forgotten (time.monotonic()).
        self.deleted: dict[str, float] = {}
        # Partition -> the last heartbeat time consumed there; the watermark is their minimum.
        self.marks: dict[int, float] = {}
        self.watermark = -math.inf
        # Ended session id -> when it may be forgotten (its access tokens have expired).
        self.revoked: dict[str, float] = {}
        # User id -> (tokens_valid_after, when it may be forgotten): sessionless tokens issued
        # at or before it are refused.
        self.cutoffs: dict[str, tuple[float, float]] = {}

    # --- writer side (the feed thread) ----------------------------------------------------

    def reset(
        self, partitions: Iterable[int], accounts: set[str], snapshot: Snapshot | None = None
    ) -> None:
        """A fresh start: nothing is known complete until a heartbeat arrives on every one of
        ``partitions``; ``accounts`` (and ``snapshot``'s revocations) is the database's state
        at the noted offsets."""
        self.watermark = -math.inf  # first: no answer from memory while the state changes
        self.marks = dict.fromkeys(partitions, -math.inf)
        accounts.difference_update(self.deleted)
        self.accounts = accounts
        if snapshot is not None:
            until = time.monotonic() + self.deleted_ttl
            for session_id in snapshot.revoked_sessions:
                self.revoked.setdefault(session_id, until)
            for user_id, cutoff in snapshot.cutoffs.items():
                self._cut(user_id, cutoff, until)

    def heartbeat(self, partition: int, at: float) -> None:
        if partition not in self.marks or at <= self.marks[partition]:
            return
        self.marks[partition] = at
        self.watermark = min(self.marks.values())

    def apply(self, event: Event) -> None:
        """Apply one account event; replays and duplicates change nothing."""
        data = event.data
        user_id = str(data.get("id") or event.owner_id)
        if event.type == EventType.ACCOUNT_CREATED:
            if user_id not in self.deleted:  # else a late duplicate: ids are never reused
                self.accounts.add(user_id)
        elif event.type == EventType.ACCOUNT_DELETED:
            # Remembered before removed: a reader between the two steps sees "deleted".
            self.deleted[user_id] = time.monotonic() + self.deleted_ttl
            self.accounts.discard(user_id)
        elif event.type == EventType.SESSIONS_REVOKED:
            until = time.monotonic() + self.deleted_ttl
            sessions = data.get("sessions")
            for session_id in sessions if isinstance(sessions, list) else ():
                if isinstance(session_id, str):
                    self.revoked[session_id] = until
            cutoff = data.get("tokens_valid_after")
            if isinstance(cutoff, int | float) and not isinstance(cutoff, bool):
                self._cut(user_id, float(cutoff), until)

    def _cut(self, user_id: str, cutoff: float, until: float) -> None:
        previous = self.cutoffs.get(user_id)
        if previous is None or cutoff >= previous[0]:
            self.cutoffs[user_id] = (cutoff, until)

    def prune(self, now: float | None = None) -> int:
        """Forget deleted ids older than a token's lifetime; the number forgotten."""
        now = time.monotonic() if now is None else now
        old = [user_id for user_id, until in self.deleted.items() if until <= now]
        for user_id in old:
            del self.deleted[user_id]
        ended = [sid for sid, until in self.revoked.items() if until <= now]
        for session_id in ended:
            del self.revoked[session_id]
        cut = [uid for uid, (_, until) in self.cutoffs.items() if until <= now]
        for user_id in cut:
            del self.cutoffs[user_id]
        return len(old) + len(ended) + len(cut)

    # --- reader side (the event loop) -----------------------------------------------------

    def lag(self, now: float | None = None) -> float:
        """Seconds between now and the watermark (infinite before the first heartbeats)."""
        return (time.time() if now is None else now) - self.watermark

    def known(self, user_id: str) -> bool | None:
        """True: the account exists; False: it was deleted; None: not known here (a new
        account whose event has not arrived yet). Meaningful only while the lag is small."""
        if user_id in self.deleted:
            return False
        if user_id in self.accounts:
            return True
        return None

    def refusal(self, identity: Identity) -> str | None:
        """Why memory refuses a token of an existing account (its session ended), or None.
        Meaningful only while the lag is small."""
        if identity.scopes is not None:  # an API key: its own lookup decides
            return None
        if identity.session_id is not None:
            return SESSION_ENDED if identity.session_id in self.revoked else None
        cut = self.cutoffs.get(identity.user_id)
        return SESSION_ENDED if cut is not None and identity.issued_at <= cut[0] else None


# The same words as security/sessions.py's (which imports the database layer; this does not).
SESSION_ENDED = "session ended (logged out, or the password changed)"


@dataclass
class Snapshot:
    """What the loader finds in the database at a (re)start."""

    accounts: set[str]
    revoked_sessions: dict[str, float] = field(default_factory=dict)  # id -> revoked_at
    cutoffs: dict[str, float] = field(default_factory=dict)  # user id -> tokens_valid_after


# Every account id in the database (a Snapshot: and the recent revocations).
Loader = Callable[[], Coroutine[Any, Any, "set[str] | Snapshot"]]


class AccountFeed:
    """The Kafka side: a consumer assigned to every partition of ``<prefix>.accounts``."""

    def __init__(self, settings: Settings, load: Loader, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.topic = f"{settings.kafka_topic_prefix}.accounts"
        self.state = AccountState(settings.token_ttl_seconds + settings.token_leeway_seconds)
        self._load = load
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.syncs = 0  # completed starts (and restarts) of the feed
        self.lag_gauge = Gauge(
            "imagegate_account_feed_lag_seconds",
            "How far the in-memory account state may be behind the database (now minus the "
            "last heartbeat time consumed on every partition; +Inf before the first ones)",
            registry=registry,
        )
        self.lag_gauge.set_function(self.state.lag)
        self.fallbacks = Counter(
            "imagegate_account_feed_fallbacks_total",
            "Account checks answered by the database instead of the feed: reason=lag (the "
            "feed is behind), unknown (an account the feed has not seen yet)",
            ["reason"],
            registry=registry,
        )
        self.events = Counter(
            "imagegate_account_feed_events_total",
            "Account events applied to the in-memory state",
            registry=registry,
        )

    async def start(self) -> None:
        """Start the feed thread; the memory answers once heartbeats have come in."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="imagegate-account-feed")
        self._thread.daemon = True  # never holds the process up at exit
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, POLL_SECONDS * 20)

    # --- the thread -----------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        from imagegate.events.kafka import common_config

        return {
            **common_config(self.settings, "replica"),
            # Required by the client; nothing is committed (offsets come from the start).
            "group.id": f"{GROUP_PREFIX}{socket.gethostname()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # A lost position (retention passed it) must not be skipped silently: resync.
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 50,
        }

    def _run(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(self._consumer_config())
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    self._sync(consumer)
                    failures = 0
                    self._consume(consumer)  # returns when a resync is needed
                except Exception as exc:  # the broker or the database is away: try again
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.warning("account feed: %s (attempt %d); retrying", exc, failures)
                    self._stopping.wait(RETRY_SECONDS)
        finally:
            consumer.close()

    def _sync(self, consumer: Any) -> None:
        """Note the end offsets, load the accounts, consume from the noted offsets."""
        from confluent_kafka import KafkaException, TopicPartition

        self.state.watermark = -math.inf
        meta = consumer.list_topics(self.topic, timeout=SYNC_TIMEOUT_SECONDS)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise RuntimeError(f"topic {self.topic} unavailable: {topic and topic.error}")
        ends: list[TopicPartition] = []
        for partition in sorted(topic.partitions):
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=SYNC_TIMEOUT_SECONDS
                )
            except KafkaException as exc:
                raise RuntimeError(f"end offset of {self.topic}[{partition}]: {exc}") from exc
            ends.append(TopicPartition(self.topic, partition, high))
        assert self._loop is not None
        loaded = asyncio.run_coroutine_threadsafe(self._load(), self._loop).result(60)
        snapshot = loaded if isinstance(loaded, Snapshot) else Snapshot(loaded)
        accounts = snapshot.accounts
        self.state.reset([tp.partition for tp in ends], accounts, snapshot)
        consumer.assign(ends)
        self.syncs += 1
        log.info(
            "account feed: %d accounts loaded; following %s (%d partitions)",
            len(accounts),
            self.topic,
            len(ends),
        )

    def _consume(self, consumer: Any) -> None:
        from confluent_kafka import KafkaError

        state = self.state
        next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        while not self._stopping.is_set():
            for msg in consumer.consume(FETCH_MAX, POLL_SECONDS):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._AUTO_OFFSET_RESET:
                        log.warning("account feed: %s; reloading", err.str())
                        return
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.debug("account feed: %s", err.str())
                    continue
                at = heartbeat_time(msg.headers())
                if at is not None:
                    state.heartbeat(msg.partition() or 0, at)
                    continue
                try:
                    event = Event.from_json(msg.value() or b"")
                except ValueError as exc:
                    log.warning(
                        "account feed: %s[%s]@%s is not an event (%s); skipped",
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        exc,
                    )
                    continue
                state.apply(event)
                self.events.inc()
            if time.monotonic() >= next_prune:
                state.prune()
                next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
