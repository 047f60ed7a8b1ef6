"""Migrations on the stack's PostgreSQL, each test in a database of its own: replicas that
migrate at the same moment serialize on an advisory lock; the outbox's NOTIFY trigger."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg

from tests.stack.conftest import Stack, stack_module


@contextmanager
def fresh_database() -> Iterator[tuple[str, dict[str, Any]]]:
    """A new, empty database owned by the services' user: (its name, admin connect args)."""
    admin = stack_module().pg_admin()
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER imagegate")
    try:
        yield name, admin
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")


def upgrade(stack: Stack, name: str, i: int = 0) -> subprocess.CompletedProcess[str]:
    """``imagegate db upgrade`` on database ``name``, as the services run it."""
    env = {**os.environ, **stack.env("security")}
    env["IMAGEGATE_DATABASE_URL"] = env["IMAGEGATE_DATABASE_URL"].rsplit("/", 1)[0] + "/" + name
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegate",
            "db",
            "upgrade",
            "--data-dir",
            str(stack.state_dir / f"migrate-{i}"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_concurrent_upgrades_on_a_fresh_database_all_succeed(stack: Stack) -> None:
    with fresh_database() as (name, admin):
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: upgrade(stack, name, i), range(4)))
        assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr[-500:] for r in results]
        with psycopg.connect(**{**admin, "dbname": name}) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert {"users", "images", "login_throttle", "alembic_version"} <= tables


def test_a_commit_adding_outbox_rows_notifies_the_relay_once(stack: Stack) -> None:
    insert = (
        "INSERT INTO outbox_events (id, type, owner_id, subject, payload, created_at)"
        " VALUES (%s, 'imagegate.image.stored', 'u', 's', '{}', %s)"
    )
    with fresh_database() as (name, admin):
        done = upgrade(stack, name)
        assert done.returncode == 0, done.stderr[-500:]
        connect = {**admin, "dbname": name}
        with (
            psycopg.connect(**connect, autocommit=True) as relay,
            psycopg.connect(**connect) as app,
        ):
            relay.execute("LISTEN imagegate_outbox")  # what events/relay.py listens on
            app.execute(insert, (str(uuid.uuid4()), datetime.now(UTC)))
            app.rollback()
            app.execute("SELECT 1")  # a transaction without events
            app.commit()
            assert list(relay.notifies(timeout=1)) == []  # nothing committed: no wake-up
            for _ in range(2):  # two statements, one transaction: one notification
                app.execute(insert, (str(uuid.uuid4()), datetime.now(UTC)))
            app.commit()
            got = list(relay.notifies(timeout=30, stop_after=1))
            got += list(relay.notifies(timeout=1))
            assert [n.channel for n in got] == ["imagegate_outbox"]
