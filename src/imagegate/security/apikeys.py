"""API keys: long-lived, scoped Bearer credentials for scripts (``igk_…``).

A key is ``igk_`` plus 320 random bits; only its SHA-256 is stored (a slow password hash buys
nothing for a secret that cannot be guessed), with its first characters kept for display.
Checking one is a primary-key read (joined with its account) whose answer each process keeps
for at most :data:`CACHE_SECONDS`, so a revoked or expired key, or a deleted account's key, is
refused everywhere within that time. Its ``last_used_at`` is written at most once a
:data:`LAST_USED_INTERVAL` per key and process, in the background, never by the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagegate.db.models import ApiKey, User
from imagegate.db.reads import Reader
from imagegate.db.types import utcnow
from imagegate.security.tokens import Identity

log = logging.getLogger("imagegate")

PREFIX = "igk_"
READ = "images:read"
WRITE = "images:write"
SCOPES = (READ, WRITE)
_RANDOM_BYTES = 40  # 320 bits: 272 of them stay secret after the shown prefix
KEY_RE = re.compile(r"igk_[A-Za-z0-9_-]{54}")
SHOWN_CHARS = 12  # "igk_" and 8 random characters (48 bits): tells keys apart in a listing
CACHE_SECONDS = 1.0
LAST_USED_INTERVAL = 60.0
_CACHE_SIZE = 10_000


class InvalidKey(Exception):
    """Unknown, revoked, expired or malformed: deliberately one kind, one answer."""


def is_api_key(credential: str) -> bool:
    """Whether a Bearer credential is meant as an API key (by its prefix, not its validity)."""
    return credential.startswith(PREFIX)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def encode_scopes(scopes: frozenset[str] | list[str]) -> str:
    return " ".join(s for s in SCOPES if s in scopes)


def decode_scopes(text: str) -> frozenset[str]:
    return frozenset(text.split())


_LOOKUP = (
    select(ApiKey.id, ApiKey.user_id, User.login, ApiKey.scopes, ApiKey.expires_at)
    .join(User, User.id == ApiKey.user_id)
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


@dataclass(frozen=True)
class _Verified:
    key_id: str
    identity: Identity
    expires_at: float  # wall clock
    checked_at: float  # monotonic


class ApiKeys:
    """Verifies keys for one process: a database read at most once a second per key."""

    def __init__(
        self,
        reads: Reader,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_seconds: float = CACHE_SECONDS,
        last_used_interval: float = LAST_USED_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reads = reads
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._last_used_interval = last_used_interval
        self._clock = clock
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._touched: dict[str, float] = {}
        self._pending: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None

    async def verify(self, key: str) -> Identity:
        """The identity a key speaks for (its scopes set), or raise :class:`InvalidKey`."""
        if not KEY_RE.fullmatch(key):
            raise InvalidKey("malformed key")
        digest = key_hash(key)
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is None or now - hit.checked_at >= self._cache_seconds:
            hit = await self._lookup(digest, now)
        if time.time() >= hit.expires_at:
            raise InvalidKey("expired key")
        self._touch(hit.key_id, now)
        return hit.identity

    async def _lookup(self, digest: str, now: float) -> _Verified:
        self._cache.pop(digest, None)
        row = await self._reads.first(_LOOKUP, key_hash=digest)
        if row is None:
            raise InvalidKey("unknown key")
        key_id, user_id, login, scopes, expires_at = row
        verified = _Verified(
            key_id,
            Identity(user_id, login, scopes=decode_scopes(scopes)),
            expires_at.timestamp(),
            now,
        )
        self._cache[digest] = verified
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return verified

    def _touch(self, key_id: str, now: float) -> None:
        """Note a use; written in the background at most once an interval per key."""
        if now - self._touched.get(key_id, -self._last_used_interval) < self._last_used_interval:
            return
        if len(self._touched) >= _CACHE_SIZE:
            stale = [k for k, t in self._touched.items() if now - t >= self._last_used_interval]
            for k in stale:
                del self._touched[k]
        self._touched[key_id] = now
        self._pending.add(key_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            ids = sorted(self._pending)
            self._pending.clear()
            try:
                async with self._sessions() as session:
                    await session.execute(
                        update(ApiKey).where(ApiKey.id.in_(ids)).values(last_used_at=utcnow())
                    )
                    await session.commit()
            except (sa_exc.SQLAlchemyError, OSError) as exc:
                # Only bookkeeping: the key worked; the next use after the interval tries again.
                log.warning("cannot record API keys' last use: %s", exc)
                for key_id in ids:
                    self._touched.pop(key_id, None)

    async def close(self) -> None:
        """Write the uses noted so far (at shutdown)."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher


# --- management (the routes in apikey_routes.py) ---------------------------------------------


class TooManyKeys(Exception):
    pass


async def create(
    session: AsyncSession,
    user_id: str,
    name: str,
    scopes: frozenset[str],
    days: int,
    limit: int,
) -> tuple[ApiKey, str] | None:
    """A new key and its secret (committed); None when the account is gone.

    Raises :class:`TooManyKeys` when the account already has ``limit`` unexpired keys."""
    # Lock the account row: two concurrent creations cannot both pass the count.
    owner = await session.scalar(select(User.id).where(User.id == user_id).with_for_update())
    if owner is None:
        return None
    now = utcnow()
    count = await session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.expires_at > now)
    )
    if (count or 0) >= limit:
        await session.rollback()
        raise TooManyKeys(limit)
    secret = new_key()
    row = ApiKey(
        id=str(uuid.uuid4()),
        user_id=user_id,
        key_hash=key_hash(secret),
        prefix=secret[:SHOWN_CHARS],
        name=name,
        scopes=encode_scopes(scopes),
        created_at=now,
        expires_at=now + timedelta(days=days),
        last_used_at=None,
    )
    session.add(row)
    try:
        await session.commit()
    except sa_exc.StatementError as exc:
        exc.hide_parameters = True  # they hold the key's hash: keep it out of any log line
        raise
    return row, secret


async def listing(session: AsyncSession, user_id: str) -> list[ApiKey]:
    """The account's keys, newest first (expired ones too, until deleted)."""
    rows = await session.scalars(
        select(ApiKey)
        .where(ApiKey.user_id == user_id)
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
    )
    return list(rows)


async def revoke(session: AsyncSession, user_id: str, key_id: str) -> bool:
    """Delete one of the account's keys (committed); False when it has no such key."""
    result = await session.execute(
        delete(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
    )
    await session.commit()
    return bool(getattr(result, "rowcount", 0))
