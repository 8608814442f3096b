"""indexes for the lists the office polls

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 08:30:00.000000

The dashboard (polled every few seconds by each open console) and `/proactive/sla/breaches` list the open
orders past their SLA by due time, now through a partial index of the open orders: with the index on
`sla_due_at` alone, PostgreSQL walked every
closed order ever due (598,200 rows removed by the filter to list 3 late orders, 230 ms, on a district with
600,000 closed orders). The dashboard's counts of transcripts done and approved today, the summary's new
orders and the transcripts' lists (sorted by when the recording was made) each scanned a whole table; so
did a visit's delete, for its readings and notes (twice on PostgreSQL: the rule, then ON DELETE SET NULL),
inside the push that holds the change sequence every other push waits for (150 ms a visit with 1,000,000
readings).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The open statuses as in api.work_orders.models.OPEN_SQL (copied: a migration must not change with the code).
OPEN_SQL = "status IN ('assigned', 'in_progress', 'new', 'waiting_resident')"
INDEXES = (
    ("ix_work_orders_created_at", "work_orders", ["created_at"]),
    ("ix_transcripts_approved_at", "transcripts", ["approved_at"]),
    ("ix_transcripts_transcribed_at", "transcripts", ["transcribed_at"]),
    ("ix_notes_recorded_at", "notes", ["recorded_at"]),
    ("ix_notes_visit_id", "notes", ["visit_id"]),
)


def upgrade() -> None:
    op.create_index("ix_work_orders_open_sla", "work_orders", ["sla_due_at", "id"], unique=False,
                    postgresql_where=sa.text(OPEN_SQL), sqlite_where=sa.text(OPEN_SQL))
    op.create_index("ix_readings_visit_id", "readings", ["visit_id"], unique=False,
                    postgresql_where=sa.text("visit_id IS NOT NULL"), sqlite_where=sa.text("visit_id IS NOT NULL"))
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_index("ix_readings_visit_id", table_name="readings")
    op.drop_index("ix_work_orders_open_sla", table_name="work_orders")
