"""Schema migrations (Alembic), callable from the CLI and at embedded start-up."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool

from imagegate.db.engine import sync_url

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("imagegate")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = sync_url(url)
    return cfg


def current_revision(url: str) -> str | None:
    """The schema's revision, or None for a database never migrated."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@contextmanager
def _alembic_quiet() -> Iterator[None]:
    """Alembic's INFO lines ("Context impl SQLiteImpl.", "Will assume transactional DDL.")
    say nothing to an operator; ``upgrade`` logs one line of its own instead. At debug
    level they stay."""
    alembic_log = logging.getLogger("alembic")
    if alembic_log.isEnabledFor(logging.DEBUG):
        yield
        return
    previous = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_log.setLevel(previous)


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; concurrent callers serialize on a database lock.
    Returns the revisions before and after (None: an empty database)."""
    with _alembic_quiet():
        before = current_revision(url)
        command.upgrade(alembic_config(url), revision)
        after = current_revision(url)
    if after != before:
        log.info("database schema upgraded from %s to %s", before or "empty", after)
    return before, after
