"""offline sync: change sequence, tombstones, scope events, clients, conflict log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:22:03.903730

Generated with `alembic revision --autogenerate` against a database at 0001, then tidied: the three
bookkeeping columns of `Versioned` are added in a loop (every Versioned table, `users` included, because
the mixin carries them).
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import api.db

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAGE_INDEXES = (('households', 'building_id'), ('work_orders', 'household_id'), ('visits', 'household_id'),
                ('readings', 'household_id'))
VERSIONED_TABLES = ('stations', 'buildings', 'households', 'work_orders', 'visits', 'readings', 'notes', 'notices',
                    'users')


def upgrade() -> None:
    op.create_table('sync_conflicts',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('client_id', sa.Uuid(), nullable=False),
    sa.Column('mutation_id', sa.BigInteger(), nullable=False),
    sa.Column('table_name', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('row_id', sa.Uuid(), nullable=False),
    sa.Column('field', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('base_version', sa.Integer(), nullable=True),
    sa.Column('server_version', sa.Integer(), nullable=True),
    sa.Column('server_value', sa.JSON(), nullable=True),
    sa.Column('device_value', sa.JSON(), nullable=True),
    sa.Column('winner', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_conflicts'))
    )
    with op.batch_alter_table('sync_conflicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_conflicts_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sync_conflicts_row_id'), ['row_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sync_conflicts_user_id'), ['user_id'], unique=False)

    op.create_table('sync_scope_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('key_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_scope_events'))
    )
    with op.batch_alter_table('sync_scope_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_scope_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_sync_scope_events_user_seq', ['user_id', 'seq'], unique=False)

    op.create_table('sync_state',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_sync_state'))
    )
    # Its rows (`seq`, `purged_seq`) are created on first use (sync/tracking.py), so an emptied database
    # works the same as a new one.

    op.create_table('sync_tombstones',
    sa.Column('table_name', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('row_id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('building_id', sa.Uuid(), nullable=True),
    sa.Column('station_id', sa.Uuid(), nullable=True),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.Column('work_order_id', sa.Uuid(), nullable=True),
    sa.Column('origin_client_id', sa.Uuid(), nullable=True),
    sa.PrimaryKeyConstraint('table_name', 'row_id', name=op.f('pk_sync_tombstones'))
    )
    with op.batch_alter_table('sync_tombstones', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_tombstones_building_id'), ['building_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sync_tombstones_deleted_at'), ['deleted_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sync_tombstones_seq'), ['seq'], unique=False)
        batch_op.create_index('ix_sync_tombstones_table_seq_row', ['table_name', 'seq', 'row_id'], unique=False)

    op.create_table('sync_clients',
    sa.Column('client_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('last_mutation_id', sa.BigInteger(), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_sync_clients_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('client_id', name=op.f('pk_sync_clients'))
    )
    with op.batch_alter_table('sync_clients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_clients_user_id'), ['user_id'], unique=False)

    # Snapshot paging by (scope key, id): sync/models.py PAGE_INDEXES.
    for table, column in PAGE_INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f'ix_{table}_{column}_id', [column, 'id'], unique=False)

    with op.batch_alter_table('readings', schema=None) as batch_op:
        batch_op.create_index('ix_readings_taken_by_id', ['taken_by_id'], unique=False)

    # Existing rows get seq 0: a first sync sends them, and no cursor can be older than 0.
    for table in VERSIONED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('seq', sa.BigInteger(), server_default='0', nullable=False))
            batch_op.add_column(sa.Column('field_versions', sa.JSON(), nullable=True))
            batch_op.add_column(sa.Column('origin_client_id', sa.Uuid(), nullable=True))
            batch_op.create_index(batch_op.f(f'ix_{table}_seq'), ['seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('readings', schema=None) as batch_op:
        batch_op.drop_index('ix_readings_taken_by_id')
    for table, column in PAGE_INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f'ix_{table}_{column}_id')

    for table in reversed(VERSIONED_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f'ix_{table}_seq'))
            batch_op.drop_column('origin_client_id')
            batch_op.drop_column('field_versions')
            batch_op.drop_column('seq')

    with op.batch_alter_table('sync_clients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sync_clients_user_id'))
    op.drop_table('sync_clients')
    with op.batch_alter_table('sync_tombstones', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_tombstones_table_seq_row')
        batch_op.drop_index(batch_op.f('ix_sync_tombstones_seq'))
        batch_op.drop_index(batch_op.f('ix_sync_tombstones_deleted_at'))
        batch_op.drop_index(batch_op.f('ix_sync_tombstones_building_id'))
    op.drop_table('sync_tombstones')
    op.drop_table('sync_state')
    with op.batch_alter_table('sync_scope_events', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_scope_events_user_seq')
        batch_op.drop_index(batch_op.f('ix_sync_scope_events_created_at'))
    op.drop_table('sync_scope_events')
    with op.batch_alter_table('sync_conflicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sync_conflicts_user_id'))
        batch_op.drop_index(batch_op.f('ix_sync_conflicts_row_id'))
        batch_op.drop_index(batch_op.f('ix_sync_conflicts_created_at'))
    op.drop_table('sync_conflicts')
