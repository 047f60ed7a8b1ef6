"""Where a replica looks up accounts on the hot path: does a token's account still exist, and
what ``GET /v1/user`` shows.

- :class:`DatabaseDirectory`: one primary-key read per call (embedded mode, where SQLite point
  reads on the loop thread are already cheap; or ``IMAGEGATE_ACCOUNT_FEED=false``).
- :class:`FeedDirectory` (``events=kafka`` on PostgreSQL): existence from the in-memory account
  feed (events/feed.py) while it is fresh, the database otherwise; ``GET /v1/user`` from
  coalesced database reads (:class:`AccountBatcher`), because the usage it shows must include
  the caller's own upload of a millisecond ago, which no feed can promise without making the
  request wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from imagegate.db import queries
from imagegate.db.models import LoginSession, User
from imagegate.db.queries import Account
from imagegate.db.reads import EngineReader, Reader
from imagegate.events.feed import AccountFeed, Loader, Snapshot
from imagegate.metrics import Metrics
from imagegate.security import sessions as login_sessions
from imagegate.security.sessions import ACCOUNT_GONE
from imagegate.security.tokens import Identity
from imagegate.settings import Role, Settings

log = logging.getLogger("imagegate")


class Directory(Protocol):
    async def exists(self, user_id: str) -> bool:
        """Whether the account still exists (a deleted account's tokens stop here)."""
        ...

    async def refusal(self, identity: Identity) -> str | None:
        """Why a verified token is refused (its account deleted, its session ended), or None
        when it is accepted: the check of every authenticated request."""
        ...

    async def account(self, user_id: str) -> Account | None:
        """The account with its usage, exact as of the call (None: it does not exist)."""
        ...

    async def account_of(self, identity: Identity) -> Account | str:
        """:meth:`account` and :meth:`refusal` together (a str: the refusal)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# The token check: the account's row and, in the same primary-key read, its cut-off and the
# token's session when that is still open (security/sessions.py).
_OPEN_SESSION = and_(
    LoginSession.id == bindparam("sid"),
    LoginSession.user_id == User.id,
    LoginSession.revoked_at.is_(None),
)
_ACCEPTS = (
    select(User.id, User.tokens_valid_after, LoginSession.id)
    .select_from(User)
    .outerjoin(LoginSession, _OPEN_SESSION)
    .where(User.id == bindparam("user_id"))
)
_ACCOUNT_OF = (
    select(
        User.id,
        User.tokens_valid_after,
        LoginSession.id,
        User.login,
        User.created_at,
        User.image_count,
        User.image_bytes,
    )
    .select_from(User)
    .outerjoin(LoginSession, _OPEN_SESSION)
    .where(User.id == bindparam("user_id"))
)


async def database_refusal(reads: Reader, identity: Identity) -> str | None:
    """The token check from the database: one primary-key read."""
    row = await reads.first(_ACCEPTS, user_id=identity.user_id, sid=identity.session_id or "")
    return login_sessions.refusal(identity, row)


class DatabaseDirectory:
    """Today's reads: one primary-key query per call."""

    def __init__(self, reads: Reader) -> None:
        self.reads = reads

    async def exists(self, user_id: str) -> bool:
        return await queries.user_exists(self.reads, user_id)

    async def refusal(self, identity: Identity) -> str | None:
        return await database_refusal(self.reads, identity)

    async def account(self, user_id: str) -> Account | None:
        return await queries.account(self.reads, user_id)

    async def account_of(self, identity: Identity) -> Account | str:
        row = await self.reads.first(
            _ACCOUNT_OF, user_id=identity.user_id, sid=identity.session_id or ""
        )
        refused = login_sessions.refusal(identity, row)
        if refused is not None or row is None:
            return refused or ACCOUNT_GONE
        return Account(row[0], row[3], row[4], int(row[5]), int(row[6]))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


# PostgreSQL: one statement whatever the batch's size (asyncpg prepares it once), run on the
# driver's connection; elsewhere (SQLite, in tests) an IN list through SQLAlchemy.
_PG_ACCOUNTS_BY_ID = (
    "SELECT id, login, created_at, image_count, image_bytes FROM users WHERE id = ANY($1::text[])"
)
_ACCOUNTS_IN = select(
    User.id, User.login, User.created_at, User.image_count, User.image_bytes
).where(User.id.in_(bindparam("ids", expanding=True)))


class AccountBatcher:
    """Coalesced account reads: the calls that arrive while a query is running share the next
    one, ``WHERE id = ANY(...)``.

    Each answer comes from a query that started after its call did, so it includes every
    commit made before the call (read-your-writes, e.g. usage right after an upload). An idle
    replica pays one query per call as before; a busy one, one per batch.
    """

    MAX_BATCH = 512

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # asyncpg's own fetch for the hot path; any other driver goes through SQLAlchemy.
        self._pg = engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"
        self._conn: AsyncConnection | None = None
        self._raw: Any = None  # the asyncpg connection under _conn
        self._waiting: dict[str, list[asyncio.Future[Account | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.queries = 0  # for tests and measurements

    async def get(self, user_id: str) -> Account | None:
        future: asyncio.Future[Account | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let the calls of this loop turn join the first query
            while self._waiting:
                batch: dict[str, list[asyncio.Future[Account | None]]] = {}
                for user_id in list(self._waiting)[: self.MAX_BATCH]:
                    batch[user_id] = self._waiting.pop(user_id)
                try:
                    found = await self._read(list(batch))
                except Exception as exc:  # each caller gets the database's error
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for user_id, futures in batch.items():
                    account = found.get(user_id)
                    for future in futures:
                        if not future.done():  # a caller that left is cancelled
                            future.set_result(account)
        finally:
            self._task = None

    async def _read(self, ids: list[str]) -> dict[str, Account]:
        self.queries += 1
        if self._pg:
            return await self._read_pg(ids)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_ACCOUNTS_IN, {"ids": ids})).all()
        return {row[0]: Account(row[0], row[1], row[2], int(row[3]), int(row[4])) for row in rows}

    async def _read_pg(self, ids: list[str]) -> dict[str, Account]:
        """On a connection of its own, straight through asyncpg: a pooled checkout pings the
        server first (pool_pre_ping), which cost more than the query. A kept connection that
        fails (e.g. the server restarted) is replaced and the read tried once more on a new
        one, as the pool's ping would have done."""
        for attempt in (1, 2):
            fresh = self._conn is None
            try:
                if self._conn is None:
                    conn = await self.engine.connect()
                    try:
                        raw = (await conn.get_raw_connection()).driver_connection
                    except BaseException:
                        await conn.close()
                        raise
                    self._conn, self._raw = conn, raw
                rows = await self._raw.fetch(_PG_ACCOUNTS_BY_ID, ids)
                break
            except Exception as exc:  # asyncpg's own errors, or the connection lost
                await self._discard()
                if attempt == 1 and not fresh:
                    continue
                if isinstance(exc, sa_exc.DBAPIError):
                    raise
                # As the engine would raise it: the app answers 503 for a database away.
                raise sa_exc.OperationalError(_PG_ACCOUNTS_BY_ID, None, exc) from exc
        return {
            row[0]: Account(row[0], row[1], row[2].astimezone(UTC), int(row[3]), int(row[4]))
            for row in rows
        }

    async def _discard(self) -> None:
        conn, self._conn, self._raw = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        await self._discard()


class FeedDirectory:
    """Existence from the account feed while it is fresh; the database otherwise."""

    def __init__(
        self,
        feed: AccountFeed,
        batcher: AccountBatcher,
        max_lag_seconds: float,
        reads: Reader | None = None,
    ) -> None:
        self.feed = feed
        self.state = feed.state
        self.batcher = batcher
        self.max_lag = max_lag_seconds
        # Session checks the memory cannot answer (it lags, or the account is new to it).
        self.reads = reads if reads is not None else EngineReader(batcher.engine)
        self._lag_fallbacks = feed.fallbacks.labels("lag")
        self._unknown_fallbacks = feed.fallbacks.labels("unknown")

    def fresh(self) -> bool:
        """Is every account change committed more than ``max_lag`` seconds ago in memory?"""
        return time.time() - self.state.watermark <= self.max_lag

    async def exists(self, user_id: str) -> bool:
        if self.fresh():
            known = self.state.known(user_id)
            if known is not None:
                return known
            self._unknown_fallbacks.inc()  # created after the feed's last event
        else:
            self._lag_fallbacks.inc()
        return await self.batcher.get(user_id) is not None

    async def refusal(self, identity: Identity) -> str | None:
        if self.fresh():
            known = self.state.known(identity.user_id)
            if known is False:
                return ACCOUNT_GONE
            refused = self.state.refusal(identity)
            if refused is not None:
                return refused
            if known:
                return None
            self._unknown_fallbacks.inc()  # created after the feed's last event
        else:
            self._lag_fallbacks.inc()
        if identity.session_id is None and identity.scopes is not None:
            # An API key: existence is all (its own lookup decides the rest), batched.
            return None if await self.batcher.get(identity.user_id) is not None else ACCOUNT_GONE
        return await database_refusal(self.reads, identity)

    async def account(self, user_id: str) -> Account | None:
        # A deletion seen by the feed is final; everything else needs the database's usage.
        if user_id in self.state.deleted and self.fresh():
            return None
        return await self.batcher.get(user_id)

    async def account_of(self, identity: Identity) -> Account | str:
        refused = await self.refusal(identity)
        if refused is not None:
            return refused
        account = await self.batcher.get(identity.user_id)
        return account if account is not None else ACCOUNT_GONE

    async def start(self) -> None:
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()
        await self.batcher.close()


def _loader(sessions: async_sessionmaker[AsyncSession], remember_revoked: float) -> Loader:
    async def load() -> Snapshot:
        async with sessions() as session:
            accounts = set((await session.scalars(select(User.id))).all())
            revoked = await login_sessions.recent_revocations(
                session, time.time(), remember_revoked
            )
            return Snapshot(accounts, revoked.sessions, revoked.cutoffs)

    return load


def build_directory(
    settings: Settings,
    roles: tuple[Role, ...],
    reads: Reader,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    metrics: Metrics,
) -> Directory:
    """The feed where it can run (``events=kafka`` with the account feed on, PostgreSQL, a
    security or uploader role); the database everywhere else."""
    serves_api = "security" in roles or "uploader" in roles
    if (
        settings.events != "kafka"
        or not settings.account_feed
        or not serves_api
        or engine.dialect.name != "postgresql"
    ):
        return DatabaseDirectory(reads)
    remember = login_sessions.Lifetimes.from_settings(settings).remember_revoked
    feed = AccountFeed(settings, _loader(sessions, remember), metrics.registry)
    return FeedDirectory(feed, AccountBatcher(engine), settings.account_feed_max_lag_seconds, reads)
