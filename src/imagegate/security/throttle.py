"""Login throttling per login, per client address and per trusted device.

Every attempt *reserves* its place on its keys before the password is checked, in one atomic
upsert per key (SQLite and PostgreSQL alike), so a burst from any number of addresses gets at
most ``max_failures`` password checks per window and key, however many run at once:

- ``reserve``: counts the attempt on every key, or on none when any key refuses (blocked, or
  ``max_failures`` attempts already counted in the window);
- ``confirm_failure``: a wrong password leaves the attempt counted; a key whose count reached
  the limit is blocked for ``lockout`` seconds, doubling with each repeat up to ``lockout_max``
  (a quiet spell as long as ``lockout_max`` after a block forgives the past);
- ``record_success``: a correct password clears the account's key (``login:`` or
  ``device:``) and gives the address back its reserved attempt.

The state lives in the database so that every replica sees it. When the database can be read
but not written (a full disk), ``MemoryThrottle`` applies the same rules inside the process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, delete, literal, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import LoginThrottle
from imagegate.security.passwords import LOGIN_RE

log = logging.getLogger("imagegate")
_T = LoginThrottle.__table__.c
_MAX_KEY_VALUE = 100  # longer key values (odd addresses, junk logins) are stored hashed


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures: int
    window: float
    lockout: float
    lockout_max: float

    def block_seconds(self, lockouts: int) -> float:
        """The length of a key's block after ``lockouts`` earlier (unforgiven) ones."""
        return float(min(self.lockout * 2 ** min(lockouts, 62), self.lockout_max))

    def block_steps(self) -> list[float]:
        """``block_seconds(0), block_seconds(1), …`` up to the first that reaches the cap."""
        steps = [self.block_seconds(0)]
        while steps[-1] < self.lockout_max and len(steps) < 63:
            steps.append(self.block_seconds(len(steps)))
        return steps

    @property
    def stale_after(self) -> float:
        """Rows idle this long carry no state: their window, block and forgiveness are over."""
        return max(3600.0, self.window + 2 * self.lockout_max)


def _key(kind: str, value: str) -> str:
    if len(value) <= _MAX_KEY_VALUE and value.isascii() and value.isprintable():
        return f"{kind}:{value}"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{kind}:#{digest}"


def login_key(login: str) -> str:
    """The key of a (normalized) login; one that cannot exist is stored hashed."""
    return f"login:{login}" if LOGIN_RE.fullmatch(login) else _key("login", login)


def address_key(address: str) -> str:
    return _key("addr", address)


def device_key(token_hash: str) -> str:
    return _key("device", token_hash)


def session_key(session_id: str) -> str:
    """A signed-in session confirming its password (password change, account deletion)."""
    return _key("session", session_id)


def refuses(
    failures: int, window_started: float, blocked_until: float, policy: ThrottlePolicy, now: float
) -> bool:
    """Whether a key in this state takes no more attempts (the reservation's condition)."""
    in_window = window_started > now - policy.window
    return blocked_until > now or (failures >= policy.max_failures and in_window)


def wait_seconds(blocked_until: float, now: float) -> float:
    """How long a refusing key keeps refusing (a hint for Retry-After). A key that is not
    blocked refuses only while ``max_failures`` counted attempts are still being checked: a
    second is the honest hint (if they fail, the block they start is what the next try sees)."""
    return blocked_until - now if blocked_until > now else 1.0


# --- the database --------------------------------------------------------------------------


def _insert(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _float(value: float) -> ColumnElement[float]:
    # Typed, so that asyncpg is told the parameter's type.
    return literal(float(value), LoginThrottle.__table__.c.updated.type)


def _reserve_statement(session: AsyncSession, key: str, policy: ThrottlePolicy, now: float) -> Any:
    now_ = _float(now)
    expired = _T.window_started <= _float(now - policy.window)
    stmt = _insert(session)(LoginThrottle).values(
        key=key, failures=1, window_started=now, blocked_until=0.0, lockouts=0, updated=now
    )
    return stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "failures": case((expired, 1), else_=_T.failures + 1),
            "window_started": case((expired, now_), else_=_T.window_started),
            "updated": now_,
        },
        # The same condition as ``refuses``, negated: no row comes back when the key refuses.
        where=(_T.blocked_until <= now_) & ((_T.failures < policy.max_failures) | expired),
    ).returning(_T.failures)


async def reserve(
    session: AsyncSession, keys: list[str], policy: ThrottlePolicy, now: float
) -> bool:
    """Count one attempt on every key, before its password is checked; commits.

    False, with nothing counted, when any key refuses. Keys are taken in sorted order, so two
    attempts that share keys never wait for each other in a cycle (PostgreSQL row locks). The
    first statement writes, so SQLite takes its write lock at once (a read first could not
    upgrade under concurrency).
    """
    for key in sorted(set(keys)):
        counted = (await session.execute(_reserve_statement(session, key, policy, now))).first()
        if counted is None:
            await session.rollback()
            return False
    await session.commit()
    return True


async def confirm_failure(
    session: AsyncSession, keys: list[str], policy: ThrottlePolicy, now: float
) -> None:
    """A wrong password: its attempt stays counted, and each key whose count reached the limit
    starts a block (doubling with each repeat, up to the cap); commits."""
    forgiven = _T.blocked_until < _float(now - policy.lockout_max)
    lockouts = case((forgiven, 0), else_=_T.lockouts)
    steps = policy.block_steps()
    block: ColumnElement[float] = _float(now + steps[-1])
    if len(steps) > 1:  # (a CASE needs one WHEN at least)
        whens = [(lockouts == i, _float(now + s)) for i, s in enumerate(steps[:-1])]
        block = case(*whens, else_=block)
    for key in sorted(set(keys)):
        await session.execute(
            update(LoginThrottle)
            .where(
                LoginThrottle.key == key,
                LoginThrottle.failures >= policy.max_failures,
                LoginThrottle.blocked_until <= now,
            )
            .values(
                blocked_until=block,
                lockouts=lockouts + 1,
                failures=0,
                window_started=now,
                updated=now,
            )
        )
    await session.commit()


async def record_success(
    session: AsyncSession, clear: str, release: list[str], *, commit: bool = True
) -> None:
    """A correct password: clear the account's key (counter, block and history) and give the
    ``release`` keys (the address) back the attempt this login reserved."""
    for key in sorted(set(release) | {clear}):  # the order ``reserve`` locks rows in
        if key == clear:
            await session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))
        else:
            await session.execute(
                update(LoginThrottle)
                .where(LoginThrottle.key == key, LoginThrottle.failures > 0)
                .values(failures=LoginThrottle.failures - 1)
            )
    if commit:
        await session.commit()


async def purge_stale(session: AsyncSession, policy: ThrottlePolicy, now: float) -> None:
    """Drop rows idle for ``policy.stale_after``; commits. Its own transaction: it holds no
    other row while it waits for one."""
    await session.execute(
        delete(LoginThrottle).where(LoginThrottle.updated < now - policy.stale_after)
    )
    await session.commit()


async def retry_after(
    session: AsyncSession, keys: list[str], policy: ThrottlePolicy, now: float
) -> int | None:
    """Seconds until every refusing key among ``keys`` takes attempts again, or None when none
    refuses. Only reads."""
    rows = await session.execute(
        select(_T.failures, _T.window_started, _T.blocked_until).where(_T.key.in_(keys))
    )
    waits = [wait_seconds(b, now) for f, w, b in rows if refuses(f, w, b, policy, now)]
    await session.rollback()
    return max(1, math.ceil(max(waits))) if waits else None


def cannot_write(exc: sa_exc.DBAPIError) -> bool:
    """Whether ``exc`` says the database refused a write (full disk, read-only, locked) rather
    than that the statement was wrong."""
    return not isinstance(exc, (sa_exc.ProgrammingError, sa_exc.IntegrityError, sa_exc.DataError))


# --- the same rules in one process, while the database cannot be written -------------------


@dataclass
class _Entry:
    failures: int
    window_started: float
    blocked_until: float = 0.0
    lockouts: int = 0


class MemoryThrottle:
    """The throttle's rules in this process's memory, for attempts the database could not
    record. Bounded: idle entries are dropped, and past ``capacity`` entries it refuses."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, keys: list[str], policy: ThrottlePolicy, now: float) -> int | None:
        waits = [
            wait_seconds(e.blocked_until, now)
            for e in (self._entries.get(k) for k in keys)
            if e is not None and refuses(e.failures, e.window_started, e.blocked_until, policy, now)
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def reserve(self, keys: list[str], policy: ThrottlePolicy, now: float) -> bool:
        """As :func:`reserve` (no awaits: atomic on the event loop)."""
        if self.retry_after(keys, policy, now) is not None:
            return False
        new = [k for k in set(keys) if k not in self._entries]
        if new and len(self._entries) + len(new) > self.capacity:
            self._prune(policy, now)
            if len(self._entries) + len(new) > self.capacity:
                return False
        for key in set(keys):
            entry = self._entries.setdefault(key, _Entry(0, now))
            if entry.window_started <= now - policy.window:
                entry.failures, entry.window_started = 0, now
            entry.failures += 1
        return True

    def confirm_failure(self, keys: list[str], policy: ThrottlePolicy, now: float) -> None:
        for key in set(keys):
            entry = self._entries.get(key)
            if entry is None or entry.failures < policy.max_failures or entry.blocked_until > now:
                continue
            if entry.blocked_until < now - policy.lockout_max:
                entry.lockouts = 0
            entry.blocked_until = now + policy.block_seconds(entry.lockouts)
            entry.lockouts += 1
            entry.failures, entry.window_started = 0, now

    def record_success(self, clear: str, release: list[str]) -> None:
        self._entries.pop(clear, None)
        for key in set(release) - {clear}:
            entry = self._entries.get(key)
            if entry is not None and entry.failures > 0:
                entry.failures -= 1

    def _prune(self, policy: ThrottlePolicy, now: float) -> None:
        idle = now - policy.stale_after
        self._entries = {
            k: e for k, e in self._entries.items() if max(e.window_started, e.blocked_until) > idle
        }


# --- one login attempt, from reservation to verdict -----------------------------------------


class Throttled(Exception):
    """The attempt was refused before its password was checked."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"throttled for {retry_after} s")
        self.retry_after = retry_after


def clock() -> float:
    """Wall-clock seconds: the rows are shared by processes (and machines)."""
    return time.time()


_last_warning = -math.inf
_failures = 0  # in this process: every PURGE_EVERY-th one also drops stale rows
PURGE_EVERY = 16


def warn_unwritable(message: str, exc: sa_exc.DBAPIError) -> None:
    """One line (the driver's message, no traceback), at most every 10 s: a flood of logins on
    a full disk would otherwise write a line per attempt."""
    global _last_warning
    if time.monotonic() - _last_warning >= 10.0:
        _last_warning = time.monotonic()
        log.warning("login throttle: %s: %s", message, str(exc.orig).splitlines()[0])


@dataclass(frozen=True)
class Attempt:
    """A reserved login attempt: the account's key (``login:`` or ``device:``), the address's,
    and whether it was counted in this process because the database could not be written."""

    account_key: str
    address_key: str | None
    in_memory: bool

    @property
    def keys(self) -> list[str]:
        return [self.account_key, *([self.address_key] if self.address_key else [])]


async def begin(
    session: AsyncSession,
    memory: MemoryThrottle,
    account_key: str,
    address_key: str | None,
    policy: ThrottlePolicy,
) -> Attempt:
    """Reserve an attempt, or raise :class:`Throttled` before any password is checked.

    When the database cannot be written (a full disk) but can be read, its blocks still hold
    and the attempt is counted in ``memory`` instead: the right password still logs in, and
    guesses stay limited (per process) rather than unlimited.
    """
    attempt = Attempt(account_key, address_key, in_memory=False)
    keys, now = attempt.keys, clock()
    # Attempts counted here while the disk was full still count once it is not.
    wait = memory.retry_after(keys, policy, now)
    if wait is not None:
        raise Throttled(wait)
    try:
        if await reserve(session, keys, policy, now):
            return attempt
        raise Throttled(await retry_after(session, keys, policy, now) or 1)
    except sa_exc.DBAPIError as exc:
        if not cannot_write(exc):
            raise
        await session.rollback()
        warn_unwritable(
            "cannot record attempts in the database; counting them in this process", exc
        )
    wait = await retry_after(session, keys, policy, now)  # a database that cannot read: 503
    if wait is not None:
        raise Throttled(wait)
    if not memory.reserve(keys, policy, now):
        raise Throttled(memory.retry_after(keys, policy, now) or 1)
    return Attempt(account_key, address_key, in_memory=True)


async def failed(
    session: AsyncSession, memory: MemoryThrottle, attempt: Attempt, policy: ThrottlePolicy
) -> None:
    """The password was wrong: the attempt stays counted, and may start a block."""
    now = clock()
    if attempt.in_memory:
        memory.confirm_failure(attempt.keys, policy, now)
        return
    global _failures
    _failures += 1
    try:
        await confirm_failure(session, attempt.keys, policy, now)
        if _failures % PURGE_EVERY == 0:
            await purge_stale(session, policy, now)
    except sa_exc.DBAPIError as exc:
        if not cannot_write(exc):
            raise
        await session.rollback()
        # Still safe: the reservation keeps counting, and a full count refuses by itself.
        warn_unwritable("cannot record a failed login (it stays counted)", exc)


async def succeeded(session: AsyncSession, memory: MemoryThrottle, attempt: Attempt) -> None:
    """The password was right: clear the account's key and give the address its attempt back.

    Adds the statements without committing: the caller commits them with the rest of a
    successful login's bookkeeping, as one transaction, and treats a database that cannot be
    written (``cannot_write``) as no reason to refuse the login.
    """
    if attempt.in_memory:
        memory.record_success(attempt.account_key, attempt.keys)
    release = [] if attempt.in_memory else attempt.keys  # nothing was reserved in the database
    await record_success(session, attempt.account_key, release, commit=False)
