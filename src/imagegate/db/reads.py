"""Point reads on the hot path (the caller's account, an image's record), each run the cheapest
way its backend allows. Writes and everything else go through sessions."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVarTuple

from sqlalchemy import Select
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler

from imagegate.db.engine import is_sqlite, sync_url

_Ts = TypeVarTuple("_Ts")


class Reader(Protocol):
    async def first(self, statement: Select[*_Ts], **params: Any) -> tuple[*_Ts] | None:
        """The first row of a read-only ``statement`` with bind ``params``, or None."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Prepared:
    """A statement compiled once for the driver: its SQL, the bind names in positional order
    with their converters, and a converter per result column (e.g. text to datetime)."""

    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    defaults: dict[str, Any]
    columns: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def compile(cls, statement: Select[*tuple[Any, ...]], dialect: Dialect) -> _Prepared:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        binds = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or ()
        )
        columns = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        )
        defaults = {n: b.effective_value for n, b in compiled.binds.items() if not b.required}
        return cls(compiled.string, binds, defaults, columns)

    def parameters(self, params: dict[str, Any]) -> tuple[Any, ...]:
        values = {**self.defaults, **params}
        return tuple(
            values[name] if convert is None else convert(values[name])
            for name, convert in self.binds
        )

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(v if c is None else c(v) for v, c in zip(raw, self.columns, strict=True))


class LoopThreadReader:
    """SQLite reads run synchronously on the event loop's own thread.

    A primary-key read costs about 10 µs there, against about 1 ms of CPU through aiosqlite,
    which hops to a worker thread and back several times per query (measured in
    docs/performance.md). Blocking the loop that long is cheaper than the hop, and in WAL mode
    a reader never waits for the writer. Each statement is compiled once by SQLAlchemy and then
    run straight on the sqlite3 connection: SQLAlchemy's per-execution bookkeeping cost twice
    the query itself. The one connection is in autocommit mode, so every read sees everything
    committed before it, and it is used by one thread at a time: a read runs to completion
    without yielding to the loop.
    """

    # A reader waits for a lock only in rare cases (WAL recovery after a crash); fail fast to
    # a 503 rather than freeze every request on the loop.
    BUSY_TIMEOUT_SECONDS = 0.25

    def __init__(self, url: str) -> None:
        self._database = make_url(sync_url(url)).database or ""
        self._dialect = SQLiteDialect_pysqlite()
        self._conn: sqlite3.Connection | None = None
        self._prepared: dict[object, _Prepared] = {}

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self._database,
                timeout=self.BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.execute("PRAGMA query_only=ON")  # least privilege: it never writes
        return self._conn

    async def first(self, statement: Select[*_Ts], **params: Any) -> tuple[*_Ts] | None:
        prepared = self._prepared.get(statement)
        if prepared is None:
            prepared = self._prepared[statement] = _Prepared.compile(statement, self._dialect)
        try:
            cursor = self._connection().execute(prepared.sql, prepared.parameters(params))
            raw = cursor.fetchone()
            cursor.close()  # ends the read: a pending statement would pin the WAL
        except sqlite3.Error as exc:
            raise DBAPIError.instance(prepared.sql, None, exc, sqlite3.Error) from exc
        return None if raw is None else prepared.row(raw)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class EngineReader:
    """Reads through the async engine's pool (PostgreSQL: asyncpg), as Core statements: no ORM
    identity map to build for a row that is read once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def first(self, statement: Select[*_Ts], **params: Any) -> tuple[*_Ts] | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(statement, params)).first()

    async def close(self) -> None:
        """The engine belongs to the runtime, which disposes of it."""


def create_reader(url: str, engine: AsyncEngine) -> Reader:
    """The reader for ``url``'s backend; ``engine`` is the app's async engine for it. An
    in-memory SQLite database exists only in the engine's own connection: it reads through it."""
    if is_sqlite(url) and make_url(url).database not in (None, "", ":memory:"):
        return LoopThreadReader(url)
    return EngineReader(engine)
