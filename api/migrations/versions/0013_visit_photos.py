"""visits: photos and a signature, by blob hash

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 05:00:00.000000

A visit names the photos taken on it (a list of blob hashes, `[]` for the visits before) and the resident's
signature image. On PostgreSQL the list is jsonb with a GIN index, for `steward blobs sweep`'s lookups.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("photos", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                                      server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("signature_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_visits_signature_sha256", ["signature_sha256"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_visits_photos", "visits", ["photos"], unique=False, postgresql_using="gin")


def downgrade() -> None:
    bind = op.get_bind()
    # Dropping them would lose every photo's and signature's link without a word to the devices (their rows
    # would keep hashes the sweep then deletes): refused while any visit names one.
    if bind.execute(sa.text("SELECT 1 FROM visits WHERE photos <> '[]' OR signature_sha256 IS NOT NULL "
                            "LIMIT 1")).first():
        raise RuntimeError("Visits name photos or signatures: going below 0013 would drop those links. Keep "
                           "0013, or restore the backup taken before the upgrade (docs/reliability.md).")
    if bind.dialect.name == "postgresql":
        op.drop_index("ix_visits_photos", table_name="visits", postgresql_using="gin")
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.drop_index("ix_visits_signature_sha256")
        batch_op.drop_column("signature_sha256")
        batch_op.drop_column("photos")
