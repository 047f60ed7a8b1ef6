"""Creating and removing accounts: shared by the HTTP routes and the CLI. Each change commits
with its event (see events/outbox.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db import queries
from imagegate.db.models import Image, PurgeObject, User, Variant
from imagegate.db.types import utcnow
from imagegate.errors import Conflict
from imagegate.events.envelope import EventType
from imagegate.events.outbox import emit
from imagegate.security.passwords import Passwords, check_password_policy, normalize_login


async def create_account(
    session: AsyncSession,
    passwords: Passwords,
    login: str,
    password: str,
    *,
    min_length: int,
    source: str,
    enforce_policy: bool = True,
) -> User:
    """Validate, hash and insert a user with its ``account.created`` event; commits. 422 for
    policy, 409 when the login is taken."""
    login = normalize_login(login)
    if enforce_policy:
        check_password_policy(password, login, min_length)
    if await queries.user_by_login(session, login) is not None:
        raise Conflict("login is already taken")
    user = User(
        id=str(uuid.uuid4()),
        login=login,
        password_hash=await passwords.hash(password),
        created_at=utcnow(),
    )
    session.add(user)
    emit(
        session,
        EventType.ACCOUNT_CREATED,
        owner_id=user.id,
        subject=f"users/{user.id}",
        data={"id": user.id, "login": user.login, "created_at": user.created_at.isoformat()},
        source=source,
    )
    try:
        await session.commit()
    except IntegrityError as exc:  # a concurrent registration won the race
        await session.rollback()
        raise Conflict("login is already taken") from exc
    return user


@dataclass(frozen=True)
class DeletedAccount:
    id: str
    login: str
    images: int
    bytes: int


async def delete_account(session: AsyncSession, user: User, *, source: str) -> DeletedAccount:
    """The one way an account goes: in one transaction its images are queued for the purge
    (``purge_objects``), the user row is deleted (its images', devices' rows by cascade) and
    ``account.deleted`` is emitted; commits. The bytes are removed afterwards by the
    ``account.deleted`` handler (events/purge.py), inline or in the Kafka worker."""
    # Lock the row first: an upload that has not committed yet then fails on the missing
    # owner (and removes its bytes), so the purge list below is complete.
    locked = await session.scalar(select(User).where(User.id == user.id).with_for_update())
    if locked is None:
        await session.rollback()
        raise LookupError(f"no such user: {user.login}")
    now = utcnow()
    # And its images (PostgreSQL): a variant maker holds its image's row while it stores and
    # records, so it either finishes first (its rows are listed below) or finds the image gone.
    await session.execute(select(Image.name).where(Image.owner_id == user.id).with_for_update())
    await session.execute(
        insert(PurgeObject).from_select(
            ["name", "public", "owner_id", "created_at"],
            select(
                Image.name,
                Image.visibility == "public",
                Image.owner_id,
                literal(now, type_=PurgeObject.__table__.c.created_at.type),
            ).where(Image.owner_id == user.id),
        )
    )
    await session.execute(
        insert(PurgeObject).from_select(
            ["name", "public", "owner_id", "created_at"],
            select(
                Variant.name,
                Variant.public,
                Variant.owner_id,
                literal(now, type_=PurgeObject.__table__.c.created_at.type),
            ).where(Variant.owner_id == user.id),
        )
    )
    # Counted after the first write: the transaction holds the write lock (SQLite) or the
    # user row (PostgreSQL), so no image can be added between the queue and the count.
    count, size = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(Image.bytes), 0)).where(
                Image.owner_id == user.id
            )
        )
    ).one()
    await session.execute(delete(User).where(User.id == user.id))  # images go by cascade
    deleted = DeletedAccount(user.id, locked.login, int(count), int(size))
    emit(
        session,
        EventType.ACCOUNT_DELETED,
        owner_id=user.id,
        subject=f"users/{user.id}",
        data={
            "id": deleted.id,
            "login": deleted.login,
            "images": deleted.images,
            "bytes": deleted.bytes,
        },
        source=source,
    )
    await session.commit()
    return deleted
