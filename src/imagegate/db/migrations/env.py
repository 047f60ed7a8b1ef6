"""Alembic environment: one synchronous connection, serialized across replicas."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from imagegate.db.models import Base

# An arbitrary constant: every replica that migrates at once takes the same advisory lock.
_PG_LOCK_ID = 0x1D4A6E


def run() -> None:
    url = context.config.attributes["url"]
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _PG_LOCK_ID})
            conn.commit()
        context.configure(
            connection=conn,
            target_metadata=Base.metadata,
            render_as_batch=conn.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
