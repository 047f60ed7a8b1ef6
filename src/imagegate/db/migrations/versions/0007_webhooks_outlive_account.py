"""Webhooks outlive their account until its last events are sent.

The webhooks' rows were deleted with the account (ON DELETE CASCADE), before the worker handled
the account's ``account.deleted`` event, or any event still waiting: those were never sent.
Now the rows stay (no foreign key; ``user_id`` is kept as the owner's id); the webhook handler
closes them when it queues ``account.deleted`` (``closed_at``), and the delivery loop removes
closed webhooks once their deliveries are finished and the retention is over.

Revision ID: 0007_webhooks_outlive_account
Revises: 0006_outbox_notify
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from imagegate.db.types import UTCDateTime

revision: str = "0007_webhooks_outlive_account"
down_revision: str | None = "0006_outbox_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_constraint("fk_webhooks_user_id_users", type_="foreignkey")
        batch.add_column(sa.Column("closed_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    # The webhooks of deleted accounts go, with their deliveries (SQLite's migration
    # connection does not cascade).
    op.execute(
        "DELETE FROM webhook_deliveries WHERE webhook_id IN"
        " (SELECT id FROM webhooks WHERE user_id NOT IN (SELECT id FROM users))"
    )
    op.execute("DELETE FROM webhooks WHERE user_id NOT IN (SELECT id FROM users)")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("closed_at")
        batch.create_foreign_key(
            "fk_webhooks_user_id_users", "users", ["user_id"], ["id"], ondelete="CASCADE"
        )
