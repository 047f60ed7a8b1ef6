"""Variants: thumbnails and other sizes of an image in AVIF, WebP and its own format.

Revision ID: 0008_variants
Revises: 0007_webhooks_outlive_account
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from imagegate.db.types import UTCDateTime

revision: str = "0008_variants"
down_revision: str | None = "0007_webhooks_outlive_account"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "variants",
        sa.Column("name", sa.String(96), nullable=False),
        sa.Column("image_name", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("custom", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_variants"),
        sa.ForeignKeyConstraint(
            ["image_name"],
            ["images.name"],
            name="fk_variants_image_name_images",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "uq_variants_image_key_format", "variants", ["image_name", "key", "format"], unique=True
    )
    op.create_index("ix_variants_custom_used", "variants", ["custom", "used_at"])
    op.create_index("ix_variants_owner_id", "variants", ["owner_id"])


def downgrade() -> None:
    # The variants' objects stay in storage; start-up reconciliation removes them as orphans.
    op.drop_table("variants")
