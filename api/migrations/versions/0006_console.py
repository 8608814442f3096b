"""console: reviewed marks on sync conflicts

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:20:00.000000

The supervisor console marks a sync conflict as reviewed (when, by whom). Nothing else it shows is stored.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import api.db

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sync_conflicts') as batch:
        batch.add_column(sa.Column('reviewed_at', api.db.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('reviewed_by_id', sa.Uuid(), nullable=True))
        batch.create_index(op.f('ix_sync_conflicts_reviewed_at'), ['reviewed_at'], unique=False)
        batch.create_foreign_key(op.f('fk_sync_conflicts_reviewed_by_id_users'), 'users', ['reviewed_by_id'],
                                 ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('sync_conflicts') as batch:
        batch.drop_constraint(op.f('fk_sync_conflicts_reviewed_by_id_users'), type_='foreignkey')
        batch.drop_index(op.f('ix_sync_conflicts_reviewed_at'))
        batch.drop_column('reviewed_by_id')
        batch.drop_column('reviewed_at')
