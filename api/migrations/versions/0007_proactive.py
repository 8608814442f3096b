"""proactive service: season calendar, notice campaigns and deliveries, complaint clusters

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 01:20:00.000000

Generated with Alembic's autogenerate against a database at 0006, then: the four enum types are dropped
on downgrade (PostgreSQL keeps them after the table).
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import api.db

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('notice_campaigns',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('field_versions', sa.JSON(), nullable=True),
    sa.Column('origin_client_id', sa.Uuid(), nullable=True),
    sa.Column('station_id', sa.Uuid(), nullable=False),
    sa.Column('season', sqlmodel.sql.sqltypes.AutoString(length=9), nullable=False),
    sa.Column('kind', sa.Enum('water_fill', 'pressure_test', 'heating_start', name='campaignkind'), nullable=False),
    sa.Column('title', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('bleed_instructions', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('service_phone', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('event_start', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('event_end', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('status', sa.Enum('draft', 'sending', 'completed', name='campaignstatus'), nullable=False),
    sa.Column('total_count', sa.Integer(), nullable=False),
    sa.Column('sent_count', sa.Integer(), nullable=False),
    sa.Column('failed_count', sa.Integer(), nullable=False),
    sa.Column('skipped_count', sa.Integer(), nullable=False),
    sa.Column('pending_count', sa.Integer(), nullable=False),
    sa.Column('created_by_id', sa.Uuid(), nullable=True),
    sa.Column('first_sent_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_run_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sending_until', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_notice_campaigns_created_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name=op.f('fk_notice_campaigns_station_id_stations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notice_campaigns')),
    sa.UniqueConstraint('station_id', 'season', 'kind', name='uq_notice_campaigns_station_season_kind')
    )
    op.create_index(op.f('ix_notice_campaigns_seq'), 'notice_campaigns', ['seq'], unique=False)
    op.create_index(op.f('ix_notice_campaigns_station_id'), 'notice_campaigns', ['station_id'], unique=False)
    op.create_index(op.f('ix_notice_campaigns_status'), 'notice_campaigns', ['status'], unique=False)
    op.create_table('season_calendars',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('station_id', sa.Uuid(), nullable=False),
    sa.Column('season', sqlmodel.sql.sqltypes.AutoString(length=9), nullable=False),
    sa.Column('water_fill_start', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('water_fill_end', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('pressure_test_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('heating_start_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('heating_end_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_by_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name=op.f('fk_season_calendars_station_id_stations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['updated_by_id'], ['users.id'], name=op.f('fk_season_calendars_updated_by_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_season_calendars')),
    sa.UniqueConstraint('station_id', 'season', name='uq_season_calendars_station_season')
    )
    op.create_index(op.f('ix_season_calendars_heating_end_at'), 'season_calendars', ['heating_end_at'], unique=False)
    op.create_index(op.f('ix_season_calendars_heating_start_at'), 'season_calendars', ['heating_start_at'], unique=False)
    op.create_index(op.f('ix_season_calendars_station_id'), 'season_calendars', ['station_id'], unique=False)
    op.create_table('campaign_deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('field_versions', sa.JSON(), nullable=True),
    sa.Column('origin_client_id', sa.Uuid(), nullable=True),
    sa.Column('campaign_id', sa.Uuid(), nullable=False),
    sa.Column('household_id', sa.Uuid(), nullable=False),
    sa.Column('phone', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('status', sa.Enum('queued', 'sent', 'failed', 'skipped', name='deliverystatus'), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('next_attempt_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['notice_campaigns.id'], name=op.f('fk_campaign_deliveries_campaign_id_notice_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_campaign_deliveries_household_id_households'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_deliveries')),
    sa.UniqueConstraint('campaign_id', 'household_id', name='uq_campaign_deliveries_campaign_household')
    )
    op.create_index(op.f('ix_campaign_deliveries_campaign_id'), 'campaign_deliveries', ['campaign_id'], unique=False)
    op.create_index(op.f('ix_campaign_deliveries_household_id'), 'campaign_deliveries', ['household_id'], unique=False)
    op.create_index(op.f('ix_campaign_deliveries_seq'), 'campaign_deliveries', ['seq'], unique=False)
    op.create_index(op.f('ix_campaign_deliveries_status'), 'campaign_deliveries', ['status'], unique=False)
    op.create_table('proactive_orders',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.Enum('riser', 'building', 'station', 'revisit', name='proactivekind'), nullable=False),
    sa.Column('group_key', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('open_key', sqlmodel.sql.sqltypes.AutoString(length=110), nullable=True),
    sa.Column('station_id', sa.Uuid(), nullable=True),
    sa.Column('building_id', sa.Uuid(), nullable=True),
    sa.Column('unit', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
    sa.Column('household_id', sa.Uuid(), nullable=True),
    sa.Column('work_order_id', sa.Uuid(), nullable=False),
    sa.Column('signal_count', sa.Integer(), nullable=False),
    sa.Column('opened_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['building_id'], ['buildings.id'], name=op.f('fk_proactive_orders_building_id_buildings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_proactive_orders_household_id_households'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name=op.f('fk_proactive_orders_station_id_stations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_proactive_orders_work_order_id_work_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_proactive_orders')),
    sa.UniqueConstraint('open_key', name=op.f('uq_proactive_orders_open_key'))
    )
    op.create_index(op.f('ix_proactive_orders_group_key'), 'proactive_orders', ['group_key'], unique=False)
    op.create_index(op.f('ix_proactive_orders_kind'), 'proactive_orders', ['kind'], unique=False)
    op.create_index(op.f('ix_proactive_orders_opened_at'), 'proactive_orders', ['opened_at'], unique=False)
    op.create_index(op.f('ix_proactive_orders_work_order_id'), 'proactive_orders', ['work_order_id'], unique=False)
    op.create_table('proactive_members',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('proactive_order_id', sa.Uuid(), nullable=False),
    sa.Column('work_order_id', sa.Uuid(), nullable=True),
    sa.Column('transcript_id', sa.Uuid(), nullable=True),
    sa.Column('household_id', sa.Uuid(), nullable=False),
    sa.Column('at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_proactive_members_household_id_households'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['proactive_order_id'], ['proactive_orders.id'], name=op.f('fk_proactive_members_proactive_order_id_proactive_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['transcript_id'], ['transcripts.id'], name=op.f('fk_proactive_members_transcript_id_transcripts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_proactive_members_work_order_id_work_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_proactive_members')),
    sa.UniqueConstraint('proactive_order_id', 'transcript_id', name='uq_proactive_members_order_transcript'),
    sa.UniqueConstraint('proactive_order_id', 'work_order_id', name='uq_proactive_members_order_work_order')
    )
    op.create_index(op.f('ix_proactive_members_proactive_order_id'), 'proactive_members', ['proactive_order_id'], unique=False)
    op.create_index(op.f('ix_proactive_members_work_order_id'), 'proactive_members', ['work_order_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_proactive_members_work_order_id'), table_name='proactive_members')
    op.drop_index(op.f('ix_proactive_members_proactive_order_id'), table_name='proactive_members')
    op.drop_table('proactive_members')
    op.drop_index(op.f('ix_proactive_orders_work_order_id'), table_name='proactive_orders')
    op.drop_index(op.f('ix_proactive_orders_opened_at'), table_name='proactive_orders')
    op.drop_index(op.f('ix_proactive_orders_kind'), table_name='proactive_orders')
    op.drop_index(op.f('ix_proactive_orders_group_key'), table_name='proactive_orders')
    op.drop_table('proactive_orders')
    op.drop_index(op.f('ix_campaign_deliveries_status'), table_name='campaign_deliveries')
    op.drop_index(op.f('ix_campaign_deliveries_seq'), table_name='campaign_deliveries')
    op.drop_index(op.f('ix_campaign_deliveries_household_id'), table_name='campaign_deliveries')
    op.drop_index(op.f('ix_campaign_deliveries_campaign_id'), table_name='campaign_deliveries')
    op.drop_table('campaign_deliveries')
    op.drop_index(op.f('ix_season_calendars_station_id'), table_name='season_calendars')
    op.drop_index(op.f('ix_season_calendars_heating_start_at'), table_name='season_calendars')
    op.drop_index(op.f('ix_season_calendars_heating_end_at'), table_name='season_calendars')
    op.drop_table('season_calendars')
    op.drop_index(op.f('ix_notice_campaigns_status'), table_name='notice_campaigns')
    op.drop_index(op.f('ix_notice_campaigns_station_id'), table_name='notice_campaigns')
    op.drop_index(op.f('ix_notice_campaigns_seq'), table_name='notice_campaigns')
    op.drop_table('notice_campaigns')

    bind = op.get_bind()
    for name in ('proactivekind', 'deliverystatus', 'campaignstatus', 'campaignkind'):
        sa.Enum(name=name).drop(bind, checkfirst=True)
