"""PostgreSQL: a NOTIFY on the outbox channel at every commit that adds outbox rows.

The relay LISTENs on it and publishes at once instead of at its next poll (the poll stays, as
the fallback). A statement-level trigger, so that every writer — whichever process, even a
hand-written INSERT — wakes it, at no extra round trip; PostgreSQL delivers the notification
only when the transaction commits, and folds a transaction's repeats into one. SQLite: nothing.

Revision ID: 0006_outbox_notify
Revises: 0005_webhooks
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_outbox_notify"
down_revision: str | None = "0005_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "imagegate_outbox"  # events/relay.py LISTENs on it


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION imagegate_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('{CHANNEL}', '');
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION imagegate_outbox_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER outbox_events_notify ON outbox_events")
    op.execute("DROP FUNCTION imagegate_outbox_notify()")
