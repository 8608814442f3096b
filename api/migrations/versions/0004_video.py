"""video: rooms (pinned to a relay worker) and snapshots of the resident's camera

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 23:10:00.000000

Generated with Alembic's autogenerate against a database at 0003, then: the two enum types are dropped
on downgrade (PostgreSQL keeps them after the table).
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import api.db


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('video_rooms',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('work_order_id', sa.Uuid(), nullable=False),
    sa.Column('created_by_id', sa.Uuid(), nullable=True),
    sa.Column('state', sa.Enum('open', 'closed', name='roomstate'), nullable=False),
    sa.Column('worker', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('worker_url', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('close_reason', sa.Enum('closed', 'empty', 'max_duration', 'shutdown', 'lost', name='closereason'), nullable=True),
    sa.Column('recording_note_id', sa.Uuid(), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_video_rooms_created_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['recording_note_id'], ['notes.id'], name=op.f('fk_video_rooms_recording_note_id_notes'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_video_rooms_work_order_id_work_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_video_rooms'))
    )
    op.create_index(op.f('ix_video_rooms_state'), 'video_rooms', ['state'], unique=False)
    op.create_index(op.f('ix_video_rooms_work_order_id'), 'video_rooms', ['work_order_id'], unique=False)
    op.create_index(op.f('ix_video_rooms_worker'), 'video_rooms', ['worker'], unique=False)
    op.create_table('video_snapshots',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('room_id', sa.Uuid(), nullable=False),
    sa.Column('work_order_id', sa.Uuid(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('taken_by_id', sa.Uuid(), nullable=True),
    sa.Column('taken_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['room_id'], ['video_rooms.id'], name=op.f('fk_video_snapshots_room_id_video_rooms'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['taken_by_id'], ['users.id'], name=op.f('fk_video_snapshots_taken_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_video_snapshots_work_order_id_work_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_video_snapshots'))
    )
    op.create_index(op.f('ix_video_snapshots_room_id'), 'video_snapshots', ['room_id'], unique=False)
    op.create_index(op.f('ix_video_snapshots_sha256'), 'video_snapshots', ['sha256'], unique=False)
    op.create_index(op.f('ix_video_snapshots_work_order_id'), 'video_snapshots', ['work_order_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_video_snapshots_work_order_id'), table_name='video_snapshots')
    op.drop_index(op.f('ix_video_snapshots_sha256'), table_name='video_snapshots')
    op.drop_index(op.f('ix_video_snapshots_room_id'), table_name='video_snapshots')
    op.drop_table('video_snapshots')
    op.drop_index(op.f('ix_video_rooms_worker'), table_name='video_rooms')
    op.drop_index(op.f('ix_video_rooms_work_order_id'), table_name='video_rooms')
    op.drop_index(op.f('ix_video_rooms_state'), table_name='video_rooms')
    op.drop_table('video_rooms')
    bind = op.get_bind()
    sa.Enum(name='closereason').drop(bind, checkfirst=True)
    sa.Enum(name='roomstate').drop(bind, checkfirst=True)
