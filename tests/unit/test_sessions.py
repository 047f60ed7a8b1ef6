"""Sessions without HTTP: refresh-token rotation, reuse detection, sliding and absolute
lifetimes, the per-account cap, revocation events, and the token check of both directories
(database and account feed) on SQLite. Times are passed in: no clock is waited for."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.db.models import LoginSession, OutboxEvent, RefreshToken, User
from imagegate.db.reads import EngineReader
from imagegate.events.envelope import Event, EventType
from imagegate.events.feed import SESSION_ENDED, AccountFeed, AccountState, Snapshot
from imagegate.security import sessions
from imagegate.security.directory import AccountBatcher, DatabaseDirectory, FeedDirectory
from imagegate.security.sessions import ACCOUNT_GONE, Lifetimes, RefreshRefused
from imagegate.security.tokens import Identity
from imagegate.settings import Settings

DAY = 86400.0
LIFE = Lifetimes(
    refresh=30 * DAY, session=90 * DAY, per_user=3, access=900.0, remember_revoked=960.0
)
T0 = 1_800_000_000.0
SRC = "/t"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    async with maker() as s:
        for uid in ("ann", "bob"):
            s.add(User(id=uid, login=uid, password_hash="x", created_at=datetime.now(UTC)))
        await s.commit()
    yield engine, maker
    await engine.dispose()


async def _start(
    maker: async_sessionmaker[AsyncSession], uid: str = "ann", now: float = T0
) -> tuple[str, str]:
    async with maker() as s:
        sid, issued = await sessions.start(s, uid, LIFE, now, source=SRC)
        await s.commit()
    assert issued is not None and issued.session_id == sid
    return sid, issued.refresh_token


async def _rotate(
    maker: async_sessionmaker[AsyncSession], token: str, now: float
) -> tuple[Identity, sessions.Issued]:
    async with maker() as s:
        result = await sessions.rotate(s, token, LIFE, now, source=SRC)
        await s.commit()
    return result


async def _events(maker: async_sessionmaker[AsyncSession]) -> list[dict[str, object]]:
    async with maker() as s:
        rows = (
            await s.scalars(
                select(OutboxEvent.payload)
                .where(OutboxEvent.type == EventType.SESSIONS_REVOKED)
                .order_by(OutboxEvent.seq)
            )
        ).all()
    return [json.loads(p)["data"] for p in rows]


def test_refresh_tokens_have_256_bits_and_a_prefix() -> None:
    tokens = {sessions.new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert token.startswith("igr_") and len(token) == 47  # 43 base64url chars = 256 bits
        assert sessions.well_formed(token)
    assert not sessions.well_formed("igr_short")
    assert not sessions.well_formed("igk_" + "A" * 43)  # an API key's prefix


async def test_rotation_issues_a_new_token_and_stores_only_hashes(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    sid, first = await _start(maker)
    identity, second = await _rotate(maker, first, T0 + 60)
    assert identity == Identity("ann", "ann", session_id=sid)
    assert second.session_id == sid and second.refresh_token != first
    assert second.expires == T0 + 60 + LIFE.refresh  # sliding: from this refresh
    _, third = await _rotate(maker, second.refresh_token, T0 + 120)
    async with maker() as s:
        hashes = set((await s.scalars(select(RefreshToken.token_hash))).all())
    assert hashes == {
        sessions.token_hash(t) for t in (first, second.refresh_token, third.refresh_token)
    }
    assert not {first, second.refresh_token} & hashes  # never the tokens themselves
    assert await _events(maker) == []


async def test_a_used_token_presented_again_revokes_the_family(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    sid, first = await _start(maker)
    other_sid, other = await _start(maker)
    _, second = await _rotate(maker, first, T0 + 1)
    with pytest.raises(RefreshRefused, match="reused"):
        await _rotate(maker, first, T0 + 2)
    with pytest.raises(RefreshRefused, match="unknown"):  # the newer one went with it
        await _rotate(maker, second.refresh_token, T0 + 3)
    assert await _events(maker) == [
        {
            "id": "ann",
            "sessions": [sid],
            "tokens_valid_after": None,
            "reason": "refresh_token_reused",
        }
    ]
    async with maker() as s:
        row = await s.get(LoginSession, sid)
        assert row is not None and row.revoked_at == T0 + 2
        left = (await s.scalars(select(RefreshToken.session_id))).all()
    assert set(left) == {other_sid}  # the family's tokens are gone; the other session's stay
    await _rotate(maker, other, T0 + 4)  # another session of the account is not touched


async def test_a_used_token_again_within_the_grace_period_gets_the_next_token(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    life = dataclasses.replace(LIFE, reuse_grace=10.0)
    sid, first = await _start(maker)

    async def rotate(token: str, now: float) -> sessions.Issued:
        async with maker() as s:
            identity, issued = await sessions.rotate(s, token, life, now, source=SRC)
            await s.commit()
        assert identity.session_id == sid
        return issued

    second = await rotate(first, T0 + 1)
    # Another client of the same login (or a retry) with the token just used: a sibling.
    sibling = await rotate(first, T0 + 11)  # 10 s after its use: still within
    assert sibling.refresh_token != second.refresh_token and sibling.session_id == sid
    await rotate(second.refresh_token, T0 + 12)  # both go on
    await rotate(sibling.refresh_token, T0 + 12)
    assert await _events(maker) == []
    # Past the grace period the same token is a stolen one: the session ends.
    with pytest.raises(RefreshRefused, match="reused"):
        await rotate(first, T0 + 12)
    assert [e["reason"] for e in await _events(maker)] == ["refresh_token_reused"]
    async with maker() as s:
        row = await s.get(LoginSession, sid)
        assert row is not None and row.revoked_at == T0 + 12


async def test_sliding_and_absolute_lifetimes(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    _, token = await _start(maker)
    with pytest.raises(RefreshRefused, match="expired"):  # unused for its whole lifetime
        await _rotate(maker, token, T0 + LIFE.refresh)
    # Refreshed every 29 days, a session still ends 90 days after its login.
    _, token = await _start(maker, now=T0)
    now = T0 + 29 * DAY
    while now < T0 + LIFE.session:
        _, issued = await _rotate(maker, token, now)
        assert issued.expires <= T0 + LIFE.session  # never past the session's end
        token = issued.refresh_token
        now += 29 * DAY
    with pytest.raises(RefreshRefused, match="expired"):
        await _rotate(maker, token, now)
    assert T0 + LIFE.session <= now < T0 + LIFE.session + 29 * DAY


async def test_refused_tokens_of_every_kind(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    for token, reason in [
        ("", "malformed"),
        ("igr_" + "A" * 42, "malformed"),
        ("igr_" + "A" * 44, "malformed"),
        ("igr_" + "A" * 43, "unknown"),
    ]:
        with pytest.raises(RefreshRefused) as caught:
            await _rotate(maker, token, T0)
        assert caught.value.reason == reason
    sid, token = await _start(maker)
    async with maker() as s:
        await sessions.revoke(s, "ann", [sid], T0 + 1, source=SRC, reason=sessions.LOGOUT)
        await s.commit()
    with pytest.raises(RefreshRefused, match="unknown"):
        await _rotate(maker, token, T0 + 2)
    # An account's deletion takes its sessions and tokens with it (cascade).
    _, token = await _start(maker, "bob")
    async with maker() as s:
        await s.execute(delete(User).where(User.id == "bob"))
        await s.commit()
        assert (
            await s.scalars(select(LoginSession).where(LoginSession.user_id == "bob"))
        ).all() == []
    with pytest.raises(RefreshRefused, match="unknown"):
        await _rotate(maker, token, T0 + 3)


async def test_a_login_past_the_cap_ends_the_oldest_session(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    started = [await _start(maker, now=T0 + i) for i in range(LIFE.per_user + 1)]
    assert await _events(maker) == [
        {
            "id": "ann",
            "sessions": [started[0][0]],
            "tokens_valid_after": None,
            "reason": "session_limit",
        }
    ]
    with pytest.raises(RefreshRefused):
        await _rotate(maker, started[0][1], T0 + 10)
    # Logins without a refresh token (the plain-text answer) do not count.
    async with maker() as s:
        sid, issued = await sessions.start(s, "ann", LIFE, T0 + 20, source=SRC, refreshable=False)
        await s.commit()
    assert issued is None
    assert len(await _events(maker)) == 1
    async with maker() as s:
        row = await s.get(LoginSession, sid)
        assert row is not None and row.expires == T0 + 20 + LIFE.access


async def test_end_all_keeps_one_session_and_sets_the_cut_off(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    a, _ = await _start(maker)
    b, _ = await _start(maker)
    async with maker() as s:
        await sessions.end_all(
            s, "ann", T0 + 5, source=SRC, reason=sessions.PASSWORD_CHANGED, keep=b
        )
        await s.commit()
        assert await sessions.open_sessions(s, "ann") == [b]
        user = await s.get(User, "ann")
        assert user is not None and user.tokens_valid_after == T0 + 5
        revocations = await sessions.recent_revocations(s, T0 + 6, 960)
    assert await _events(maker) == [
        {"id": "ann", "sessions": [a], "tokens_valid_after": T0 + 5, "reason": "password_changed"}
    ]
    assert revocations.sessions == {a: T0 + 5} and revocations.cutoffs == {"ann": T0 + 5}
    async with maker() as s:  # beyond an access token's lifetime: nothing to load, rows pruned
        assert (await sessions.recent_revocations(s, T0 + 5 + 961, 960)).sessions == {}
        await sessions.prune(s, T0 + 5 + 961, LIFE)
        await s.commit()
        assert await s.get(LoginSession, a) is None
        assert await s.get(LoginSession, b) is not None


async def test_database_directory_checks_account_session_and_cut_off_in_one_read(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    engine, maker = db
    directory = DatabaseDirectory(EngineReader(engine))
    sid, _ = await _start(maker)
    bob_sid, _ = await _start(maker, "bob")
    assert await directory.refusal(Identity("ann", "ann", session_id=sid)) is None
    account = await directory.account_of(Identity("ann", "ann", session_id=sid))
    assert not isinstance(account, str) and account.login == "ann"
    # Another account's session is not this account's.
    assert await directory.refusal(Identity("ann", "ann", session_id=bob_sid)) == SESSION_ENDED
    assert await directory.refusal(Identity("ann", "ann", session_id="nope")) == SESSION_ENDED
    legacy = Identity("ann", "ann", issued_at=int(T0))  # a token from before sessions
    assert await directory.refusal(legacy) is None
    key = Identity("ann", "ann", scopes=frozenset({"images:read"}))
    async with maker() as s:
        await sessions.end_all(s, "ann", T0 + 1, source=SRC, reason=sessions.LOGOUT_ALL)
        await s.commit()
    assert await directory.refusal(Identity("ann", "ann", session_id=sid)) == SESSION_ENDED
    assert await directory.account_of(Identity("ann", "ann", session_id=sid)) == SESSION_ENDED
    assert await directory.refusal(legacy) == SESSION_ENDED
    assert await directory.refusal(Identity("ann", "ann", issued_at=int(T0) + 2)) is None
    assert await directory.refusal(key) is None  # an API key is its own lookup's business
    assert await directory.refusal(Identity("ghost", "g", session_id=sid)) == ACCOUNT_GONE
    assert await directory.account_of(Identity("ghost", "g")) == ACCOUNT_GONE


def _revoked(user_id: str, ids: list[str], cutoff: float | None = None) -> Event:
    data = {"id": user_id, "sessions": ids, "tokens_valid_after": cutoff, "reason": "logout"}
    return Event.new(
        EventType.SESSIONS_REVOKED,
        source=SRC,
        subject=f"users/{user_id}",
        owner_id=user_id,
        data=data,
    )


def test_account_state_refuses_revoked_sessions_and_forgets_them_later() -> None:
    state = AccountState(60)
    state.reset([0], {"ann"})
    ok = Identity("ann", "ann", session_id="s1")
    assert state.refusal(ok) is None
    state.apply(_revoked("ann", ["s1"]))
    state.apply(_revoked("ann", ["s1"]))  # a duplicate changes nothing
    assert state.refusal(ok) == SESSION_ENDED
    assert state.refusal(Identity("ann", "ann", session_id="s2")) is None
    state.apply(_revoked("ann", [], cutoff=1000.0))
    assert state.refusal(Identity("ann", "ann", issued_at=1000)) == SESSION_ENDED
    assert state.refusal(Identity("ann", "ann", issued_at=1001)) is None
    state.apply(_revoked("ann", [], cutoff=900.0))  # an older cut-off moves nothing back
    assert state.refusal(Identity("ann", "ann", issued_at=950)) == SESSION_ENDED
    assert state.refusal(Identity("ann", "ann", scopes=frozenset())) is None  # API keys
    assert state.prune(time.monotonic() + 61) == 2
    assert state.refusal(ok) is None and state.cutoffs == {}
    # A restart loads the recent revocations from the database.
    state.reset([0], {"ann"}, Snapshot({"ann"}, {"s9": 5.0}, {"ann": 2000.0}))
    assert state.refusal(Identity("ann", "ann", session_id="s9")) == SESSION_ENDED
    assert state.refusal(Identity("ann", "ann", issued_at=1999)) == SESSION_ENDED


async def test_feed_directory_answers_sessions_from_memory_while_fresh(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    engine, maker = db
    sid, _ = await _start(maker)

    async def load() -> set[str]:
        return set()

    feed = AccountFeed(Settings(events="kafka"), load, CollectorRegistry())
    directory = FeedDirectory(feed, AccountBatcher(engine), 1.0, EngineReader(engine))
    state = feed.state
    mine = Identity("ann", "ann", session_id=sid)
    try:
        state.reset([0], {"ann"})
        # Not fresh: the database answers (the session is open there).
        assert await directory.refusal(mine) is None
        state.heartbeat(0, time.time())
        # Fresh: memory answers: a revocation it knows of is refused although the database
        # still has the session open (proof of where the answer came from).
        state.apply(_revoked("ann", [sid]))
        assert await directory.refusal(mine) == SESSION_ENDED
        assert await directory.account_of(mine) == SESSION_ENDED
        # An account memory does not know yet: the database decides, session included.
        assert await directory.refusal(Identity("bob", "bob", session_id="none")) == SESSION_ENDED
        bob_sid, _ = await _start(maker, "bob")
        bob = Identity("bob", "bob", session_id=bob_sid)
        assert await directory.refusal(bob) is None
        account = await directory.account_of(bob)
        assert not isinstance(account, str) and account.login == "bob"
        state.apply(
            Event.new(
                EventType.ACCOUNT_DELETED,
                source=SRC,
                subject="users/ann",
                owner_id="ann",
                data={"id": "ann"},
            )
        )
        assert await directory.refusal(Identity("ann", "ann", session_id="x")) == ACCOUNT_GONE
    finally:
        await directory.batcher.close()


async def test_a_session_keeps_only_its_latest_used_tokens(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, maker = db
    _, token = await _start(maker)
    for i in range(sessions.USED_TOKENS_KEPT + 10):
        _, issued = await _rotate(maker, token, T0 + 1 + i)
        token = issued.refresh_token
    async with maker() as s:
        used = (
            await s.scalars(select(RefreshToken.used).where(RefreshToken.used.is_not(None)))
        ).all()
        unused = (
            await s.scalars(select(RefreshToken.token_hash).where(RefreshToken.used.is_(None)))
        ).all()
    assert len(used) == sessions.USED_TOKENS_KEPT and len(unused) == 1
    # The latest ones: reuse of a recent token is still detected.
    assert min(used) == T0 + 1 + 10
