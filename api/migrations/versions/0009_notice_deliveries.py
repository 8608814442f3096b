"""notices: one delivery row per household, claimed before each SMS and retried on failure

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00.000000

Generated with Alembic's autogenerate against a database at 0008, then: the status column reuses the
`deliverystatus` type of 0007 (PostgreSQL: not created again here, nor dropped on downgrade).
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import api.db

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUS = sa.Enum('queued', 'sent', 'failed', 'skipped', name='deliverystatus').with_variant(
    postgresql.ENUM('queued', 'sent', 'failed', 'skipped', name='deliverystatus', create_type=False), 'postgresql')


def upgrade() -> None:
    op.create_table('notice_deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('notice_id', sa.Uuid(), nullable=False),
    sa.Column('household_id', sa.Uuid(), nullable=False),
    sa.Column('phone', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('status', _STATUS, nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('next_attempt_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_notice_deliveries_household_id_households'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['notice_id'], ['notices.id'], name=op.f('fk_notice_deliveries_notice_id_notices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notice_deliveries')),
    sa.UniqueConstraint('notice_id', 'household_id', name='uq_notice_deliveries_notice_household')
    )
    op.create_index(op.f('ix_notice_deliveries_household_id'), 'notice_deliveries', ['household_id'], unique=False)
    op.create_index(op.f('ix_notice_deliveries_notice_id'), 'notice_deliveries', ['notice_id'], unique=False)
    op.create_index(op.f('ix_notice_deliveries_status'), 'notice_deliveries', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_notice_deliveries_status'), table_name='notice_deliveries')
    op.drop_index(op.f('ix_notice_deliveries_notice_id'), table_name='notice_deliveries')
    op.drop_index(op.f('ix_notice_deliveries_household_id'), table_name='notice_deliveries')
    op.drop_table('notice_deliveries')
