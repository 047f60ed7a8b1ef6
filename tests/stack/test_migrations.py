"""Replicas that migrate at the same moment serialize on PostgreSQL's advisory lock."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg

from tests.stack.conftest import Stack, stack_module


def test_concurrent_upgrades_on_a_fresh_database_all_succeed(stack: Stack) -> None:
    module = stack_module()
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = module.pg_admin()
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER imagegate")
    try:
        env = {**os.environ, **stack.env("security")}
        env["IMAGEGATE_DATABASE_URL"] = env["IMAGEGATE_DATABASE_URL"].rsplit("/", 1)[0] + "/" + name

        def upgrade(i: int) -> subprocess.CompletedProcess[str]:
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

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(upgrade, range(4)))
        assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr[-500:] for r in results]
        with psycopg.connect(**{**admin, "dbname": name}) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert {"users", "images", "login_throttle", "alembic_version"} <= tables
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
