"""The login throttle's reservation logic, on SQLite (and PostgreSQL when
IMAGEGATE_TEST_POSTGRES_URL names a database to use), and its in-process twin.

Time is passed in, never read: nothing here depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imagegate.db.engine import create_engine, create_sessionmaker, is_sqlite
from imagegate.db.migrate import upgrade
from imagegate.db.models import LoginDevice, LoginThrottle, User
from imagegate.db.types import utcnow
from imagegate.security import devices, throttle

POLICY = throttle.ThrottlePolicy(max_failures=5, window=300, lockout=60, lockout_max=900)
# The fixtures' loop (asyncpg's connections belong to the loop that opened them).
on_fixture_loop = pytest.mark.asyncio(loop_scope="session")
PG_URL = os.environ.get("IMAGEGATE_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "memory"] + (["postgresql"] if PG_URL else [])
DATABASES = [b for b in BACKENDS if b != "memory"]
Test = TypeVar("Test", bound=Callable[..., Awaitable[None]])


def on_each_database(test: Test) -> Test:
    """Run ``test`` once per real database (the ``database`` fixture), on the fixtures' loop."""
    return on_fixture_loop(pytest.mark.parametrize("database", DATABASES, indirect=True)(test))


@pytest.fixture
async def database(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated, empty database: SQLite in tmp_path, or the PostgreSQL one (emptied)."""
    url = PG_URL if getattr(request, "param", "sqlite") == "postgresql" else None
    url = url or f"sqlite:///{tmp_path / 't.db'}"
    upgrade(url)
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM login_throttle"))
    await engine.dispose()
    return url


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@dataclass
class Backend:
    """The same four operations on the database or on a MemoryThrottle."""

    sessions: async_sessionmaker[AsyncSession] | None
    memory: throttle.MemoryThrottle

    async def _run(self, op: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        assert self.sessions is not None
        async with self.sessions() as s:
            return await op(s)

    async def reserve(self, keys: list[str], now: float) -> bool:
        if self.sessions is None:
            return self.memory.reserve(keys, POLICY, now)
        return bool(await self._run(lambda s: throttle.reserve(s, keys, POLICY, now)))

    async def confirm_failure(self, keys: list[str], now: float) -> None:
        if self.sessions is None:
            self.memory.confirm_failure(keys, POLICY, now)
            return
        await self._run(lambda s: throttle.confirm_failure(s, keys, POLICY, now))

    async def success(self, clear: str, release: list[str]) -> None:
        if self.sessions is None:
            self.memory.record_success(clear, release)
            return
        await self._run(lambda s: throttle.record_success(s, clear, release))

    async def retry_after(self, keys: list[str], now: float) -> int | None:
        if self.sessions is None:
            return self.memory.retry_after(keys, POLICY, now)
        result: int | None = await self._run(lambda s: throttle.retry_after(s, keys, POLICY, now))
        return result

    async def fail(self, keys: list[str], now: float, times: int = 1) -> None:
        """``times`` wrong passwords, one after another."""
        for _ in range(times):
            assert await self.reserve(keys, now)
            await self.confirm_failure(keys, now)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend(None, throttle.MemoryThrottle())
        return
    url = PG_URL if request.param == "postgresql" else f"sqlite:///{tmp_path / 't.db'}"
    assert url is not None
    upgrade(url)
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM login_throttle"))
    yield Backend(create_sessionmaker(engine), throttle.MemoryThrottle())
    await engine.dispose()


@on_fixture_loop
async def test_five_failures_block_then_the_block_doubles_up_to_the_cap(backend: Backend) -> None:
    keys = ["login:alice"]
    await backend.fail(keys, 1000.0, 4)
    assert await backend.retry_after(keys, 1000.0) is None
    await backend.fail(keys, 1000.0)
    assert await backend.retry_after(keys, 1000.0) == 60
    assert not await backend.reserve(keys, 1000.0)
    now, block_ends = 1000.0, 1060.0
    for block in [120, 240, 480, 900, 900]:
        now = block_ends + 1  # the attacker comes back as soon as the block ends
        assert await backend.retry_after(keys, now) is None
        await backend.fail(keys, now, 5)
        assert await backend.retry_after(keys, now) == block
        block_ends = now + block


@on_fixture_loop
async def test_a_quiet_spell_as_long_as_the_cap_forgives_earlier_blocks(backend: Backend) -> None:
    keys = ["login:carol"]
    await backend.fail(keys, 1000.0, 5)  # blocked until 1060
    await backend.fail(keys, 1061.0, 5)  # the second block: 120 s, until 1181
    assert await backend.retry_after(keys, 1061.0) == 120
    later = 1181.0 + POLICY.lockout_max + 1
    await backend.fail(keys, later, 5)
    assert await backend.retry_after(keys, later) == 60


@on_fixture_loop
async def test_failures_outside_the_window_do_not_add_up(backend: Backend) -> None:
    keys = ["addr:10.0.0.1"]
    for i in range(10):
        await backend.fail(keys, 1000.0 + i * 100, 1)  # 1 per 100 s: at most 3 in any window
    assert await backend.retry_after(keys, 2000.0) is None


@on_fixture_loop
async def test_reservations_in_flight_count_before_any_verdict(backend: Backend) -> None:
    """Five attempts reserved and not yet checked: the sixth is refused at once."""
    keys = ["login:dave"]
    for _ in range(5):
        assert await backend.reserve(keys, 1000.0)
    assert not await backend.reserve(keys, 1000.0)
    assert await backend.retry_after(keys, 1000.0) == 1  # they may all succeed
    # The first verdict (wrong) starts the block; the others add nothing to it.
    for _ in range(5):
        await backend.confirm_failure(keys, 1001.0)
    assert await backend.retry_after(keys, 1001.0) == 60


@on_fixture_loop
async def test_a_refused_reservation_counts_on_no_key(backend: Backend) -> None:
    await backend.fail(["login:erin"], 1000.0, 5)  # erin is blocked
    for _ in range(10):
        assert not await backend.reserve(["login:erin", "addr:10.0.0.3"], 1000.0)
    # The address was never charged: five attempts on other logins go through.
    for i in range(5):
        assert await backend.reserve([f"login:other{i}", "addr:10.0.0.3"], 1000.0)


@on_fixture_loop
async def test_success_clears_the_login_and_releases_the_address(backend: Backend) -> None:
    login, addr = "login:bob", "addr:10.0.0.2"
    await backend.fail([login, addr], 1000.0, 4)
    assert await backend.reserve([login, addr], 1000.0)  # the fifth attempt: the right one
    await backend.success(login, [login, addr])
    # The login starts over; the address still holds its four failures, not five.
    await backend.fail([login], 1001.0, 4)
    assert await backend.retry_after([login], 1001.0) is None
    assert await backend.reserve([addr], 1001.0)
    assert not await backend.reserve([addr], 1001.0)


@on_fixture_loop
async def test_successes_alone_never_block_an_address(backend: Backend) -> None:
    addr = "addr:10.0.0.4"
    for i in range(20):
        keys = [f"login:user{i}", addr]
        assert await backend.reserve(keys, 1000.0)
        await backend.success(keys[0], keys)
    assert await backend.retry_after([addr], 1000.0) is None


@on_fixture_loop
async def test_a_device_key_is_its_own_budget(backend: Backend) -> None:
    await backend.fail(["login:frank"], 1000.0, 5)
    assert not await backend.reserve(["login:frank"], 1000.0)
    device = throttle.device_key("ab" * 32)
    await backend.fail([device], 1000.0, 4)
    assert await backend.reserve([device], 1000.0)
    await backend.success(device, [device])
    assert await backend.retry_after([device], 1000.0) is None
    assert not await backend.reserve(["login:frank"], 1000.0)  # the login's block stands


@on_each_database
async def test_a_burst_from_many_addresses_gets_five_checks_across_replicas(
    database: str,
) -> None:
    """60 attempts at once, on two engines (two replicas' pools), each from its own address:
    exactly five are reserved."""
    engines = [create_engine(database), create_engine(database)]
    makers = [create_sessionmaker(e) for e in engines]
    start = asyncio.Event()

    async def attempt(i: int) -> bool:
        await start.wait()
        async with makers[i % 2]() as s:
            return await throttle.reserve(s, ["login:grace", f"addr:10.1.0.{i}"], POLICY, 1000.0)

    tasks = [asyncio.create_task(attempt(i)) for i in range(60)]
    start.set()
    results = await asyncio.gather(*tasks)
    for e in engines:
        await e.dispose()
    assert results.count(True) == 5


@on_each_database
async def test_verdicts_and_reservations_at_once_never_wait_in_a_cycle(database: str) -> None:
    """Reservations, failures and successes on shared logins and addresses all at once: with
    rows always taken in the same order, none deadlocks (PostgreSQL would abort one)."""
    engines = [create_engine(database), create_engine(database)]
    makers = [create_sessionmaker(e) for e in engines]
    start = asyncio.Event()
    now = 1000.0

    async def attempt(i: int) -> bool:
        keys = [f"login:shared{i % 3}", f"addr:10.3.0.{i % 4}"]
        await start.wait()
        async with makers[i % 2]() as s:
            if not await throttle.reserve(s, keys, POLICY, now):
                return False
            if i % 2:
                await throttle.confirm_failure(s, keys, POLICY, now)
            else:
                await throttle.record_success(s, keys[0], keys)
            return True

    tasks = [asyncio.create_task(attempt(i)) for i in range(60)]
    start.set()
    results = await asyncio.gather(*tasks)
    for e in engines:
        await e.dispose()
    assert any(results)


@on_each_database
async def test_stale_rows_are_dropped(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as s:
        await throttle.reserve(s, ["login:old"], POLICY, 1000.0)
        later = 1000.0 + POLICY.stale_after + 1
        await throttle.reserve(s, ["login:new"], POLICY, later)
        await throttle.purge_stale(s, POLICY, later)
        keys = set(await s.scalars(text("SELECT key FROM login_throttle")))
    assert keys == {"login:new"}


def _read_only(engine: AsyncEngine) -> None:
    """Every connection of ``engine`` may read but not write (a full disk, as the throttle
    sees it: its writes fail, its reads work)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _: Any) -> None:
        cur = dbapi_conn.cursor()
        if is_sqlite(str(engine.url)):
            cur.execute("PRAGMA query_only = ON")
        else:
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            dbapi_conn.commit()  # a SET in a rolled-back transaction would be undone
        cur.close()


@on_each_database
async def test_a_database_that_cannot_write_falls_back_to_counting_in_the_process(
    database: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as s:  # before the disk fills: henry is blocked
        for _ in range(5):
            await throttle.reserve(s, ["login:henry"], POLICY, throttle.clock())
            await throttle.confirm_failure(s, ["login:henry"], POLICY, throttle.clock())
    full = create_engine(database)
    _read_only(full)
    memory = throttle.MemoryThrottle()
    try:
        async with create_sessionmaker(full)() as s:
            # Blocks recorded before still hold.
            with pytest.raises(throttle.Throttled):
                await throttle.begin(s, memory, "login:henry", "addr:10.2.0.1", POLICY)
            # Other attempts are counted here instead, with the same limit.
            for i in range(5):
                attempt = await throttle.begin(s, memory, "login:ivy", f"addr:10.2.0.{i}", POLICY)
                assert attempt.in_memory
                await throttle.failed(s, memory, attempt, POLICY)
            with pytest.raises(throttle.Throttled) as refused:
                await throttle.begin(s, memory, "login:ivy", "addr:10.2.0.9", POLICY)
            assert 1 <= refused.value.retry_after <= 60
            # A right password: the process's counters are settled; the database's write
            # fails as one the caller may ignore (the login route does: best effort).
            for _ in range(2 * POLICY.max_failures):
                attempt = await throttle.begin(s, memory, "login:jack", "addr:10.2.0.8", POLICY)
                with pytest.raises(sa_exc.DBAPIError) as unwritable:
                    await throttle.succeeded(s, memory, attempt)
                assert throttle.cannot_write(unwritable.value)
                await s.rollback()
    finally:
        await full.dispose()
    # Once the database writes again, what was counted in the process still holds.
    async with sessions() as s:
        with pytest.raises(throttle.Throttled):
            await throttle.begin(s, memory, "login:ivy", "addr:10.2.0.10", POLICY)
        assert not (await throttle.begin(s, memory, "login:kim", None, POLICY)).in_memory


@on_each_database
async def test_a_first_block_at_the_cap_does_not_double(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    flat = throttle.ThrottlePolicy(max_failures=1, window=300, lockout=600, lockout_max=60)
    async with sessions() as s:
        for now in (1000.0, 1061.0):
            assert await throttle.reserve(s, ["login:lee"], flat, now)
            await throttle.confirm_failure(s, ["login:lee"], flat, now)
            assert await throttle.retry_after(s, ["login:lee"], flat, now) == 60


def test_the_memory_fallback_is_bounded() -> None:
    memory = throttle.MemoryThrottle(capacity=10)
    for i in range(10):
        assert memory.reserve([f"login:u{i}"], POLICY, 1000.0)
    assert not memory.reserve(["login:one-more"], POLICY, 1000.0)
    # Idle entries make room again.
    assert memory.reserve(["login:one-more"], POLICY, 1000.0 + POLICY.stale_after + 1)
    assert len(memory) == 1


@pytest.mark.parametrize(
    ("value", "kind"),
    [("bob", "login:bob"), ("x" * 500, "login:#"), ("a\x00b", "login:#"), ("\ud800", "login:#")],
)
def test_keys_stay_short_and_printable(value: str, kind: str) -> None:
    key = throttle.login_key(value)
    assert key.startswith(kind)
    assert len(key) <= 200 and key.isascii() and key.isprintable()


def test_block_steps_double_up_to_the_cap() -> None:
    assert POLICY.block_steps() == [60, 120, 240, 480, 900]
    odd = throttle.ThrottlePolicy(max_failures=1, window=1, lockout=1, lockout_max=10**9)
    assert odd.block_steps()[-1] == 10**9 and len(odd.block_steps()) <= 63


@on_fixture_loop
async def test_model_and_migration_agree(database: str) -> None:
    """The models' tables exist as the migrations create them (0003 included)."""
    engine = create_engine(database)
    async with engine.connect() as conn:
        for table in (LoginThrottle.__tablename__, "login_devices"):
            await conn.execute(text(f"SELECT * FROM {table} WHERE 1 = 0"))  # noqa: S608
    await engine.dispose()


# --- device cookies --------------------------------------------------------------------------


async def _user(session: AsyncSession, login: str) -> str:
    login = f"{login}-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database outlives a run
    user = User(id=str(uuid.uuid4()), login=login, password_hash="x", created_at=utcnow())
    session.add(user)
    await session.commit()
    return user.id


@on_each_database
async def test_a_device_cookie_is_trusted_only_for_its_account_until_it_expires(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s:
        alice, bob = await _user(s, "alice-dev"), await _user(s, "bob-dev")
        token = await devices.issue(s, alice, 1000.0, 3600, None)
        await s.commit()
        digest = await devices.trusted(s, token, alice, 1000.0)
        assert digest == devices.token_hash(token)
        assert await devices.trusted(s, token, bob, 1000.0) is None
        assert await devices.trusted(s, token, alice, 4600.0) is None  # expired
        for junk in ("", "A" * 43, token + "x", "é" * 10, "a" * 5000):
            assert await devices.trusted(s, junk, alice, 1000.0) is None
        # Rotation: the replaced cookie stops counting.
        newer = await devices.issue(s, alice, 1001.0, 3600, digest)
        await s.commit()
        assert await devices.trusted(s, token, alice, 1001.0) is None
        assert await devices.trusted(s, newer, alice, 1001.0) is not None
        query = select(LoginDevice.token_hash).where(LoginDevice.user_id == alice)
        stored = set(await s.scalars(query))
        assert token not in stored and newer not in stored  # only hashes are kept


@on_each_database
async def test_device_rows_are_bounded_per_account_and_go_with_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s:
        carol = await _user(s, "carol-dev")
        tokens = []
        for i in range(devices.MAX_PER_USER + 5):
            tokens.append(await devices.issue(s, carol, 1000.0 + i, 3600, None))
            await s.commit()
        rows = list(await s.scalars(select(LoginDevice).where(LoginDevice.user_id == carol)))
        assert len(rows) == devices.MAX_PER_USER
        assert await devices.trusted(s, tokens[0], carol, 2000.0) is None  # the oldest went
        assert await devices.trusted(s, tokens[-1], carol, 2000.0) is not None
        user = await s.get(User, carol)
        await s.delete(user)
        await s.commit()
        assert not list(await s.scalars(select(LoginDevice).where(LoginDevice.user_id == carol)))
