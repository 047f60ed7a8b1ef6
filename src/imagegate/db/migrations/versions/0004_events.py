"""Events: the transactional outbox, and objects of deleted accounts waiting to be purged.

Revision ID: 0004_events
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from imagegate.db.types import UTCDateTime

revision: str = "0004_events"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "outbox_events",
        # SQLite autoincrements only an INTEGER PRIMARY KEY (its rowid); BIGINT elsewhere.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        # The writing transaction's id on PostgreSQL (the relay's commit-order fence).
        sa.Column(
            "txid",
            sa.BigInteger(),
            nullable=True,
            server_default=sa.text("(pg_current_xact_id()::text::bigint)") if postgres else None,
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox_events"),
        sa.UniqueConstraint("id", name="uq_outbox_events_id"),
    )
    op.create_index("ix_outbox_events_owner_id", "outbox_events", ["owner_id"])
    op.create_index("ix_outbox_events_published_seq", "outbox_events", ["published_at", "seq"])
    op.create_table(
        "purge_objects",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_purge_objects"),
    )
    op.create_index("ix_purge_objects_owner_id", "purge_objects", ["owner_id"])


def downgrade() -> None:
    op.drop_index("ix_purge_objects_owner_id", table_name="purge_objects")
    op.drop_table("purge_objects")
    op.drop_index("ix_outbox_events_published_seq", table_name="outbox_events")
    op.drop_index("ix_outbox_events_owner_id", table_name="outbox_events")
    op.drop_table("outbox_events")
