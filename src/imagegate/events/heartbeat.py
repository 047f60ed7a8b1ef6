"""The relay's heartbeats to ``<prefix>.accounts``: what lets each replica's account feed
(events/feed.py) know how complete its memory is.

A heartbeat carries a time ``s`` and promises that every event committed before ``s`` is in
Kafka, each before the heartbeat in its partition (they were acknowledged before it was
produced). It goes to every partition (Kafka header ``imagegate-heartbeat``, empty value, no
key), at most every ``account_feed_heartbeat_seconds``, after a batch was published.

Finding ``s`` (:class:`Watermark`): the batch query also returns, from its own snapshot, the
time of that snapshot (PostgreSQL's ``now()``, taken before the snapshot: whatever committed
before it is visible) and the seqs of every committed row still unpublished. After the batch,
the ones it did not take (held back by the xmin fence, or beyond the batch size) are still
unpublished; each was first seen in some snapshot and was not visible in the one before, so it
committed after that earlier snapshot's time. ``s`` is the snapshot's time, or the earliest of
those lower bounds when rows are left. Under a steady stream of overlapping write
transactions the fence nearly always holds some row back: waiting for a batch that leaves
nothing behind would stop the watermark altogether, whereas this way it trails by a batch or
two.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from imagegate.events.feed import encode_heartbeat
from imagegate.settings import Settings

log = logging.getLogger("imagegate.events")


_WITH_HEAD = """
WITH head AS (
  SELECT extract(epoch FROM now())::float8 AS snapshot_at,
         ARRAY(
           SELECT seq FROM outbox_events WHERE published_at IS NULL
           ORDER BY published_at, seq LIMIT %s
         ) AS unpublished
)
SELECT CASE WHEN b.n IS NULL OR b.n = 1 THEN head.snapshot_at END AS snapshot_at,
       CASE WHEN b.n IS NULL OR b.n = 1 THEN head.unpublished END AS unpublished,
       b.*
FROM head LEFT JOIN LATERAL (
  SELECT batch.*, row_number() OVER (ORDER BY batch.seq) AS n FROM ({batch}) AS batch
) AS b ON true
ORDER BY b.seq
"""


def with_head(select_batch: str) -> str:
    """The relay's batch query (``select_batch``, ending in ``LIMIT %s``), wrapped so that one
    statement, hence one snapshot, also returns the snapshot's time and the seqs of the
    committed rows still unpublished (at most the batch size + 1: one more than a batch tells
    that the list is cut). An empty batch still returns the head row (with a NULL seq). The
    head's values are on the first row only: repeated on every row, the list made the batch
    quadratic to decode. Parameters: (batch size + 1, batch size)."""
    return _WITH_HEAD.replace("{batch}", select_batch.strip())


def batch_head(rows: Sequence[Any]) -> tuple[float, list[int], list[Any]]:
    """Split the rows of :func:`with_head`'s query: (snapshot time, unpublished seqs, batch)."""
    if not rows:  # cannot happen (the head always comes back); proves nothing if it did
        return -math.inf, [], []
    head = rows[0]
    batch = [row for row in rows if row["seq"] is not None]
    return float(head["snapshot_at"]), list(head["unpublished"]), batch


class Watermark:
    """The time before which every committed event has been published (see the module)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # the batch size + 1, as in the query
        # Unpublished seq -> a time it is known to have committed after.
        self._after: dict[int, float] = {}
        # The time of the last snapshot whose list was complete: a row missing from that list
        # and unpublished now committed after it (a batch that failed in between changes
        # nothing to that).
        self._previous = -math.inf

    def after_batch(
        self, snapshot_at: float, unpublished: Sequence[int], taken: Iterable[int]
    ) -> float:
        """Call once the batch's rows (``taken``) are all acknowledged; ``unpublished`` is the
        list from the same snapshot. Returns the new watermark (-inf: none known)."""
        complete = len(unpublished) < self.limit
        bounds = {seq: self._after.get(seq, self._previous) for seq in unpublished}
        self._after = bounds
        self._previous = snapshot_at if complete else -math.inf
        if not complete:  # rows beyond the list: their commit times are unknown
            return -math.inf
        taken = set(taken)
        return min([snapshot_at, *(t for seq, t in bounds.items() if seq not in taken)])


# How often the partitions of the topic are looked up again (partitions can be added).
PARTITIONS_EVERY_SECONDS = 60.0
METADATA_TIMEOUT_SECONDS = 5.0


class Heartbeats:
    """Sends the heartbeats of one relay, at most every ``account_feed_heartbeat_seconds``."""

    def __init__(self, settings: Settings) -> None:
        self.topic = f"{settings.kafka_topic_prefix}.accounts"
        self.period = settings.account_feed_heartbeat_seconds
        self.watermark = Watermark(settings.outbox_batch_size + 1)
        self._partitions: list[int] = []
        self._partitions_at = -math.inf
        self._sent = -math.inf  # time.monotonic() of the last heartbeat
        self.last_time = -math.inf  # the time it carried

    async def after_batch(
        self,
        producer: Any,
        snapshot_at: float,
        unpublished: Sequence[int],
        taken: Iterable[int],
    ) -> None:
        """Call once a batch's rows (``taken``; none for an empty batch) are all acknowledged:
        sends a heartbeat when one is due and the watermark moved."""
        at = self.watermark.after_batch(snapshot_at, unpublished, taken)
        if at <= self.last_time or time.monotonic() - self._sent < self.period:
            return
        if time.monotonic() - self._partitions_at >= PARTITIONS_EVERY_SECONDS:
            try:
                self._partitions = await asyncio.to_thread(self._lookup, producer)
                self._partitions_at = time.monotonic()
            except Exception as exc:
                log.warning("relay: partitions of %s unknown: %s", self.topic, exc)
                return
        headers = encode_heartbeat(at)
        try:
            for partition in self._partitions:
                producer.produce(self.topic, value=b"", partition=partition, headers=headers)
        except BufferError:  # the queue is full of events: the next heartbeat will do
            return
        producer.poll(0)
        self._sent = time.monotonic()
        self.last_time = at

    def _lookup(self, producer: Any) -> list[int]:
        meta = producer.list_topics(self.topic, timeout=METADATA_TIMEOUT_SECONDS)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise RuntimeError(str(topic.error) if topic else "no such topic")
        return sorted(topic.partitions)
