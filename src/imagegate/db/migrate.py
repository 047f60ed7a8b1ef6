"""Schema migrations (Alembic), callable from the CLI and at embedded start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from imagegate.db.engine import sync_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = sync_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``; concurrent callers serialize on a database lock."""
    command.upgrade(alembic_config(url), revision)
