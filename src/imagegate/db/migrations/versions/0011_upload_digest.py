"""Same upload twice: the sha256 of the uploaded bytes per owner.

Images stored before this revision keep ``upload_sha256`` NULL: only their re-encoded bytes'
digest was kept, which a new upload's bytes cannot be compared with, so they are never matched
as duplicates (NULLs are outside the unique index).

Revision ID: 0011_upload_digest
Revises: 0010_api_keys
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_upload_digest"
down_revision: str | None = "0010_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("upload_sha256 IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("upload_sha256", sa.String(64), nullable=True))
    op.create_index(
        "uq_images_owner_upload_sha256",
        "images",
        ["owner_id", "upload_sha256"],
        unique=True,
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("uq_images_owner_upload_sha256", table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("upload_sha256")
