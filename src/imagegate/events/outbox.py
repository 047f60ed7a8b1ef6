"""The transactional outbox: events written in the caller's transaction, read back in order.

``emit`` adds a row to the caller's session, so the event commits (or rolls back) with the
change it describes. The inline dispatcher and the Kafka relay read rows with ``pending``,
mark them with ``mark_published`` and prune old ones with ``prune``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from imagegate.db.models import OutboxEvent
from imagegate.db.types import utcnow
from imagegate.events.envelope import Event

# session.info key of a callable run after a commit that emitted events (the runtime sets it
# on its sessionmaker, so a local dispatcher wakes at once instead of at its next poll).
WAKE_INFO_KEY = "imagegate.events.wake"
_LISTENING_INFO_KEY = "imagegate.events.wake_listening"


def emit(
    session: AsyncSession,
    type: str,
    *,
    owner_id: str,
    subject: str,
    data: Mapping[str, Any],
    source: str,
) -> Event:
    """Add ``type``'s event to the caller's transaction; the caller commits."""
    evt = Event.new(type, source=source, subject=subject, owner_id=owner_id, data=data)
    session.add(
        OutboxEvent(
            id=evt.id,
            type=evt.type,
            owner_id=owner_id,
            subject=subject,
            payload=evt.to_json().decode(),
            created_at=evt.time,
        )
    )
    _wake_after_commit(session)
    return evt


def _wake_after_commit(session: AsyncSession) -> None:
    wake: Callable[[], None] | None = session.info.get(WAKE_INFO_KEY)
    if wake is None or session.info.get(_LISTENING_INFO_KEY):
        return
    session.info[_LISTENING_INFO_KEY] = True
    sync = session.sync_session

    # After a rollback the listener stays for the session's next commit: a spare wake-up
    # costs one empty poll.
    def after_commit(_: Session) -> None:
        session.info.pop(_LISTENING_INFO_KEY, None)
        wake()

    event.listen(sync, "after_commit", after_commit, once=True)


@dataclass(frozen=True)
class Pending:
    """An unpublished outbox row."""

    seq: int
    owner_id: str
    type: str
    payload: str
    txid: int | None

    def event(self) -> Event:
        return Event.from_json(self.payload)


async def pending(
    session: AsyncSession,
    limit: int,
    *,
    skip_owners: Collection[str] = (),
    after_seq: int = 0,
    for_update_skip_locked: bool = False,
) -> list[Pending]:
    """Up to ``limit`` unpublished rows in ``seq`` order, past ``after_seq``, leaving out
    ``skip_owners`` (owners whose earlier event is waiting for a retry)."""
    query = (
        select(
            OutboxEvent.seq,
            OutboxEvent.owner_id,
            OutboxEvent.type,
            OutboxEvent.payload,
            OutboxEvent.txid,
        )
        .where(OutboxEvent.published_at.is_(None), OutboxEvent.seq > after_seq)
        .order_by(OutboxEvent.seq)
        .limit(limit)
    )
    if skip_owners:
        query = query.where(OutboxEvent.owner_id.not_in(list(skip_owners)))
    if for_update_skip_locked:
        query = query.with_for_update(skip_locked=True)
    return [Pending(*row) for row in await session.execute(query)]


async def mark_published(
    session: AsyncSession, seqs: Sequence[int], when: datetime | None = None
) -> None:
    """Mark rows published (the caller commits)."""
    if seqs:
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.seq.in_(list(seqs)))
            .values(published_at=when or utcnow())
        )


async def prune(session: AsyncSession, retention_seconds: float) -> int:
    """Delete rows published more than ``retention_seconds`` ago; returns how many (the
    caller commits)."""
    cutoff = utcnow() - timedelta(seconds=retention_seconds)
    result = await session.execute(
        delete(OutboxEvent).where(
            OutboxEvent.published_at.is_not(None), OutboxEvent.published_at < cutoff
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class Backlog:
    """Unpublished rows and the age of the oldest (0 when none)."""

    depth: int
    oldest_age_seconds: float


async def backlog(session: AsyncSession) -> Backlog:
    """One cheap query (the (published_at, seq) index): how far behind publishing is."""
    row = (
        await session.execute(
            select(func.count(), func.min(OutboxEvent.created_at)).where(
                OutboxEvent.published_at.is_(None)
            )
        )
    ).one()
    depth, oldest = int(row[0]), row[1]
    if oldest is None:
        return Backlog(depth, 0.0)
    if isinstance(oldest, str):  # SQLite: an aggregate bypasses the column's type
        oldest = datetime.fromisoformat(oldest)
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return Backlog(depth, max(0.0, (utcnow() - oldest).total_seconds()))
