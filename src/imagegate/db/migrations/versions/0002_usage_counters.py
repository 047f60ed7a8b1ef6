"""Per-user image count and bytes, kept with every insert and delete of an image.

Summing a user's images per request cost 130 ms at 100,000 images; the counters make
GET /v1/user one primary-key read at any size.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("image_count", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("image_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE users SET"
        " image_count = (SELECT count(*) FROM images WHERE images.owner_id = users.id),"
        " image_bytes = (SELECT coalesce(sum(bytes), 0) FROM images"
        " WHERE images.owner_id = users.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("image_bytes")
        batch.drop_column("image_count")
