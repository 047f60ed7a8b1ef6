"""Login sessions: refresh tokens, rotation with reuse detection, and revocation.

Each login starts a *session*: a family of refresh tokens (RFC 9700). A refresh token is
``igr_`` plus 256 random bits, stored only as its SHA-256; it lives ``refresh_token_days``
from its issue (sliding: each refresh issues a new one) and never past the session's absolute
end (``session_max_days`` after the login). Refreshing *rotates*: the token presented is
marked used and a new one issued. A used token presented again means two parties hold the
family (a stolen token, or its owner after a theft): the whole session is revoked, unless it
comes within ``refresh_reuse_grace_seconds`` of its use (a race or a retry: it gets the next
token too).

Access tokens carry their session's id (``sid``). Ending a session (logout, a password change,
a reused refresh token) sets ``revoked_at`` and emits ``account.sessions_revoked`` in the same
transaction, so every replica refuses its access tokens: from the database read it makes per
request (security/directory.py), or from the account feed (events/feed.py). A revoked row is
kept while an access token of it could still be valid, so that a replica that starts can load
the recent revocations; then it is pruned.
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import LoginSession, RefreshToken, User
from imagegate.events.envelope import EventType
from imagegate.events.feed import SESSION_ENDED
from imagegate.events.outbox import emit
from imagegate.security.tokens import Identity
from imagegate.settings import Settings

REFRESH_PREFIX = "igr_"
REFRESH_COOKIE = "imagegate_refresh"
COOKIE_PATH = "/v1/token"  # the refresh cookie goes to the token routes only
_REFRESH_RE = re.compile(r"igr_[A-Za-z0-9_-]{43}")

# Why a session's access tokens are refused (the 401's message).
ACCOUNT_GONE = "account no longer exists"

# Reasons carried by account.sessions_revoked (and logged).
LOGOUT = "logout"
LOGOUT_ALL = "logout_all"
PASSWORD_CHANGED = "password_changed"  # noqa: S105 - a reason, not a password
REUSED = "refresh_token_reused"
SESSION_LIMIT = "session_limit"
USED_TOKENS_KEPT = 16  # per session, for reuse detection


@dataclass(frozen=True)
class Lifetimes:
    """How long refresh tokens, sessions and revoked rows last, in seconds."""

    refresh: float
    session: float
    per_user: int
    access: float  # an access token's lifetime
    # A revoked session is remembered while its access tokens could still be accepted.
    remember_revoked: float
    # A used token presented again this soon is a race or a retry, not a theft (see rotate).
    reuse_grace: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Lifetimes:
        return cls(
            refresh=settings.refresh_token_days * 86400,
            session=settings.session_max_days * 86400,
            per_user=settings.sessions_per_user,
            access=float(settings.token_ttl_seconds),
            remember_revoked=float(settings.token_ttl_seconds + settings.token_leeway_seconds),
            reuse_grace=settings.refresh_reuse_grace_seconds,
        )


@dataclass(frozen=True)
class Issued:
    """A session's new refresh token."""

    session_id: str
    refresh_token: str
    expires: float  # Unix seconds

    def max_age(self, now: float) -> int:
        return max(0, int(self.expires - now))


class RefreshRefused(Exception):
    """A refresh token that gets no new tokens; ``reason`` is for the log only (every one
    answers the same 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    # 256 random bits: a fast hash is enough (no dictionary to try), and makes lookups PK reads.
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed(token: str) -> bool:
    return _REFRESH_RE.fullmatch(token) is not None


def refusal(identity: Identity, row: tuple[Any, ...] | None) -> str | None:
    """Why ``identity``'s token is refused given the directory's row ``(user id,
    tokens_valid_after, the session's id when open)``, or None when it is accepted."""
    if row is None:
        return ACCOUNT_GONE
    if identity.scopes is not None:  # an API key: its own lookup decides
        return None
    if identity.session_id is not None:
        return None if row[2] is not None else SESSION_ENDED
    cutoff = row[1]  # a token from before sessions existed
    return None if cutoff is None or identity.issued_at > cutoff else SESSION_ENDED


async def _add_token(
    session: AsyncSession, session_id: str, session_end: float, lifetimes: Lifetimes, now: float
) -> Issued:
    token = new_refresh_token()
    expires = min(now + lifetimes.refresh, session_end)
    session.add(
        RefreshToken(
            token_hash=token_hash(token),
            session_id=session_id,
            created=now,
            expires=expires,
            used=None,
        )
    )
    await session.flush()
    return Issued(session_id, token, expires)


async def start(
    session: AsyncSession,
    user_id: str,
    lifetimes: Lifetimes,
    now: float,
    *,
    source: str,
    refreshable: bool = True,
) -> tuple[str, Issued | None]:
    """A new session (its id) with its first refresh token; ends the account's oldest open
    sessions beyond ``per_user`` and drops its stale rows. A session that is not
    ``refreshable`` (a login that did not ask for a refresh token, such as the reference
    design's curl session) ends with its one access token and takes no place among the
    ``per_user``. The caller commits."""
    await prune(session, now, lifetimes, user_id=user_id)
    if random.random() < 1 / 64:  # spreading the clean-up over logins, not a secret
        await prune(session, now, lifetimes)
    session_id = str(uuid.uuid4())
    end = now + (lifetimes.session if refreshable else lifetimes.access)
    session.add(
        LoginSession(
            id=session_id, user_id=user_id, created=now, expires=end, last_used=now, revoked_at=None
        )
    )
    await session.flush()
    if not refreshable:
        return session_id, None
    issued = await _add_token(session, session_id, end, lifetimes, now)
    surplus = (
        await session.scalars(
            select(LoginSession.id)
            .where(
                LoginSession.user_id == user_id,
                LoginSession.revoked_at.is_(None),
                LoginSession.expires > now + lifetimes.access,  # the refreshable ones
            )
            .order_by(LoginSession.created.desc(), LoginSession.id)
            .offset(lifetimes.per_user)
        )
    ).all()
    if surplus:
        await revoke(session, user_id, list(surplus), now, source=source, reason=SESSION_LIMIT)
    return session_id, issued


async def open_sessions(session: AsyncSession, user_id: str) -> list[str]:
    """The ids of the account's sessions that are not revoked."""
    return list(
        (
            await session.scalars(
                select(LoginSession.id).where(
                    LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None)
                )
            )
        ).all()
    )


async def revoke(
    session: AsyncSession,
    user_id: str,
    session_ids: Sequence[str],
    now: float,
    *,
    source: str,
    reason: str,
    cutoff: float | None = None,
) -> None:
    """End ``session_ids`` (their refresh tokens are deleted, their access tokens refused) and,
    with ``cutoff``, every sessionless token issued before it; emits
    ``account.sessions_revoked`` in the caller's transaction. The caller commits."""
    ids = sorted(set(session_ids))
    if ids:
        await session.execute(
            update(LoginSession)
            .where(LoginSession.id.in_(ids), LoginSession.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await session.execute(delete(RefreshToken).where(RefreshToken.session_id.in_(ids)))
    if cutoff is not None:
        await session.execute(
            update(User).where(User.id == user_id).values(tokens_valid_after=cutoff)
        )
    if not ids and cutoff is None:
        return
    emit(
        session,
        EventType.SESSIONS_REVOKED,
        owner_id=user_id,
        subject=f"users/{user_id}",
        data={"id": user_id, "sessions": ids, "tokens_valid_after": cutoff, "reason": reason},
        source=source,
    )


async def end_all(
    session: AsyncSession,
    user_id: str,
    now: float,
    *,
    source: str,
    reason: str,
    keep: str | None = None,
) -> None:
    """End every session of the account but ``keep``, and every sessionless token issued
    until now. The caller commits."""
    ids = [sid for sid in await open_sessions(session, user_id) if sid != keep]
    await revoke(session, user_id, ids, now, source=source, reason=reason, cutoff=now)


_ROTATE = (
    select(
        RefreshToken.session_id,
        RefreshToken.expires,
        RefreshToken.used,
        LoginSession.user_id,
        LoginSession.expires,
        LoginSession.revoked_at,
        User.login,
    )
    .join(LoginSession, LoginSession.id == RefreshToken.session_id)
    .join(User, User.id == LoginSession.user_id)
)


async def rotate(
    session: AsyncSession, token: str, lifetimes: Lifetimes, now: float, *, source: str
) -> tuple[Identity, Issued]:
    """Exchange a refresh token for its session's next one; the caller commits and signs an
    access token for the identity. :class:`RefreshRefused` for anything else: a token that
    was already used revokes its whole session first (committed here)."""
    if not well_formed(token):
        raise RefreshRefused("malformed")
    digest = token_hash(token)
    row = (await session.execute(_ROTATE.where(RefreshToken.token_hash == digest))).first()
    if row is None:
        raise RefreshRefused("unknown")  # never issued, or its session ended
    session_id, expires, used, user_id, session_end, revoked_at, login = row
    if revoked_at is not None:
        raise RefreshRefused("session ended")
    # Within the grace period a used token gets the session's next token once more: two
    # clients sharing one login refreshed at once, or a client retried after losing the
    # answer. Later, only a thief (or its victim) can be presenting it.
    grace = used is not None and now - used <= lifetimes.reuse_grace
    if used is not None and not grace:
        await _reused(session, user_id, session_id, now, source)
    if expires <= now or session_end <= now:
        raise RefreshRefused("expired")
    if not grace:
        # The conditional update is the arbiter: of two requests with one token, one wins;
        # the other was used just now, so only the grace period lets it through too.
        marked = await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == digest, RefreshToken.used.is_(None))
            .values(used=now)
        )
        if getattr(marked, "rowcount", 0) != 1 and lifetimes.reuse_grace <= 0:
            await session.rollback()
            await _reused(session, user_id, session_id, now, source)
    await session.execute(
        update(LoginSession).where(LoginSession.id == session_id).values(last_used=now)
    )
    # Used tokens are kept for reuse detection only while they could still be presented, and
    # only the session's latest few: a client refreshing in a loop must not grow the table
    # without bound. An older one presented again is merely unknown (401, no revocation).
    recent = (
        select(RefreshToken.token_hash)
        .where(RefreshToken.session_id == session_id, RefreshToken.used.is_not(None))
        .order_by(RefreshToken.used.desc())
        .limit(USED_TOKENS_KEPT)
        .scalar_subquery()
    )
    await session.execute(
        delete(RefreshToken).where(
            RefreshToken.session_id == session_id,
            RefreshToken.used.is_not(None),
            (RefreshToken.expires <= now) | RefreshToken.token_hash.not_in(recent),
        )
    )
    issued = await _add_token(session, session_id, session_end, lifetimes, now)
    return Identity(user_id, login, session_id=session_id), issued


async def _reused(
    session: AsyncSession, user_id: str, session_id: str, now: float, source: str
) -> None:
    await revoke(session, user_id, [session_id], now, source=source, reason=REUSED)
    await session.commit()
    raise RefreshRefused("reused: session revoked")


async def session_of_token(session: AsyncSession, token: str) -> tuple[str, str] | None:
    """(user id, session id) of an unused, unexpired refresh token of an open session."""
    if not well_formed(token):
        return None
    row = (
        await session.execute(
            select(LoginSession.user_id, LoginSession.id)
            .join(RefreshToken, RefreshToken.session_id == LoginSession.id)
            .where(RefreshToken.token_hash == token_hash(token), LoginSession.revoked_at.is_(None))
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def prune(
    session: AsyncSession, now: float, lifetimes: Lifetimes, *, user_id: str | None = None
) -> None:
    """Drop sessions (and their tokens) revoked or ended longer ago than an access token of
    them can live: one account's, or everyone's. The caller commits."""
    old = now - lifetimes.remember_revoked
    stale = or_(LoginSession.revoked_at < old, LoginSession.expires < old)
    query = delete(LoginSession).where(stale)
    if user_id is not None:
        query = query.where(LoginSession.user_id == user_id)
    await session.execute(query)


@dataclass(frozen=True)
class Revocations:
    """What a replica's account feed must know at start: recent revocations."""

    sessions: dict[str, float]  # session id -> revoked_at
    cutoffs: dict[str, float]  # user id -> tokens_valid_after


async def recent_revocations(session: AsyncSession, now: float, within: float) -> Revocations:
    """Sessions revoked, and cut-offs set, in the last ``within`` seconds."""
    since = now - within
    sessions = await session.execute(
        select(LoginSession.id, LoginSession.revoked_at).where(LoginSession.revoked_at > since)
    )
    cutoffs = await session.execute(
        select(User.id, User.tokens_valid_after).where(User.tokens_valid_after > since)
    )
    return Revocations(
        {sid: float(at) for sid, at in sessions if at is not None},
        {uid: float(at) for uid, at in cutoffs if at is not None},
    )
