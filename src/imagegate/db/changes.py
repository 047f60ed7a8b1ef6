"""Whether a SQLite database changed since the last look, for pollers that would otherwise
read it on every turn (the inline event dispatcher, the serving path's record cache)."""

from __future__ import annotations

import sqlite3

from sqlalchemy import make_url


class SqliteChanges:
    """Whether anyone committed to a SQLite database file since the last look: ``PRAGMA
    data_version`` on a read-only connection of its own, which changes when another
    connection (this process's engine, or another process such as the CLI) commits.

    A look costs a few microseconds (a statement on the caller's thread); nothing blocks: in
    WAL mode a reader never waits for the writer."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    def changed(self) -> bool:
        """True when something was committed since the last call; also on the first call and
        whenever the look fails (the caller then acts as if something had changed)."""
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self.database, timeout=0.25, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA query_only=ON")
            row = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            self.close()
            return True
        version = int(row[0])
        changed, self._version = version != self._version, version
        return changed

    def close(self) -> None:
        conn, self._conn, self._version = self._conn, None, None
        if conn is not None:
            conn.close()


def sqlite_changes(database_url: str) -> SqliteChanges | None:
    """A change detector for the database's SQLite file; None for any other database (or an
    in-memory one, which another connection cannot see)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database.startswith("file:"):
        return None  # a URI filename (maybe shared memory): poll as before
    return SqliteChanges(url.database)
